//! The fuzz target bodies (`allot_tests::fuzz`, run under libFuzzer from `fuzz/`) on stable, in every CI run:
//! over a corpus of adversarial inputs (absurd resources: negative, NaN, infinite, 1e308; oversized and
//! duplicate launches; out-of-range grant indices and negative amounts) and 20,000 deterministic
//! pseudo-random inputs each, mutations of the corpus included; and credential parsing (issue 23) over valid
//! and broken certificate sets made here.

use allot_proto::common::{CommandInfo, Range, Resource, TaskInfo};
use allot_proto::scheduler::{AcceptRequest, Launch, Operation, operation};
use allot_tests::fuzz;
use prost::Message as _;

fn scalar(name: &str, v: f64) -> Resource {
    Resource {
        name: name.into(),
        scalar: v,
        ..Default::default()
    }
}

fn task(id: &str, resources: Vec<Resource>) -> TaskInfo {
    TaskInfo {
        task_id: id.into(),
        command: Some(CommandInfo {
            value: "true".into(),
            ..Default::default()
        }),
        resources,
        ..Default::default()
    }
}

fn accept(tasks: Vec<TaskInfo>) -> Vec<u8> {
    AcceptRequest {
        framework_id: "f".into(),
        offer_ids: vec!["o".into()],
        operations: vec![Operation {
            operation: Some(operation::Operation::Launch(Launch { task_infos: tasks })),
        }],
        filters: None,
    }
    .encode_to_vec()
}

/// Adversarial seeds, each as protocol bytes.
fn corpus() -> Vec<Vec<u8>> {
    let absurd = [
        -1.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e308,
        5e-324,
        0.0,
        4.0,
        4.0001,
    ];
    let mut seeds = Vec::new();
    for v in absurd {
        seeds.push(accept(vec![task(
            "t",
            vec![scalar("cpus", v), scalar("mem", 32.0)],
        )]));
        seeds.push(task("t", vec![scalar("mem", v)]).encode_to_vec());
    }
    // Overcommit across tasks, duplicate IDs, a bad ID, many tasks, ports outside the offer, empty ranges.
    seeds.push(accept(
        (0..5)
            .map(|i| task(&format!("t{i}"), vec![scalar("cpus", 1.0)]))
            .collect(),
    ));
    seeds.push(accept(vec![
        task("t", vec![scalar("cpus", 1.0)]),
        task("t", vec![scalar("cpus", 1.0)]),
    ]));
    seeds.push(accept(vec![task("../etc", vec![scalar("cpus", 1.0)])]));
    seeds.push(accept(
        (0..2000)
            .map(|i| task(&format!("t{i}"), vec![scalar("cpus", 0.001)]))
            .collect(),
    ));
    let ports = |b, e| Resource {
        name: "ports".into(),
        ranges: vec![Range { begin: b, end: e }],
        ..Default::default()
    };
    seeds.push(accept(vec![task("t", vec![ports(30000, 31000)])]));
    seeds.push(accept(vec![task("t", vec![ports(31005, 31002)])]));
    seeds.push(accept(vec![task("t", vec![ports(0, u64::MAX)])]));
    seeds.push(Vec::new());
    seeds.push(vec![0xff; 64]);
    // Grants: framework/agent indices out of range, negative and huge amounts, wrong vector lengths.
    let mut grants = Vec::new();
    for (fw, agent, shape) in [(0u8, 0u8, 1u8), (7, 1, 1), (1, 9, 5), (2, 1, 2), (1, 1, 4)] {
        grants.extend([fw, agent, shape]);
        for amount in [4000i64, -1, i64::MAX, 0, 512_000, 1] {
            grants.extend(amount.to_le_bytes());
        }
    }
    seeds.push(grants);
    // Grants that fit: one CPU, one MiB of each other kind, unreserved, to each framework on each agent; and
    // a reserved one for role db (framework index 1) on a2 (agent index 1).
    for kinds in [3usize, 4] {
        let mut fitting = Vec::new();
        for fw in 0..3u8 {
            for agent in 0..3u8 {
                fitting.extend([fw, agent, 1]);
                for _ in 0..kinds {
                    fitting.extend(1000i64.to_le_bytes());
                }
            }
        }
        fitting.extend([1, 1, 4]);
        for _ in 0..kinds {
            fitting.extend(1000i64.to_le_bytes());
        }
        seeds.push(fitting);
    }
    seeds
}

/// xorshift64*: deterministic pseudo-random bytes, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A random input: fresh bytes, or a seed with a few bytes flipped, cut or repeated.
    fn input(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let pick = self.next() as usize;
        if pick.is_multiple_of(3) || seeds.is_empty() {
            let n = (self.next() % 256) as usize;
            return (0..n).map(|_| self.next() as u8).collect();
        }
        let mut v = seeds[pick % seeds.len()].clone();
        for _ in 0..1 + self.next() % 4 {
            if v.is_empty() {
                break;
            }
            let at = (self.next() as usize) % v.len();
            match self.next() % 3 {
                0 => v[at] = self.next() as u8,
                1 => v.truncate(at),
                _ => {
                    let tail = v[at..].to_vec();
                    v.extend(tail);
                }
            }
        }
        v
    }
}

/// Runs `target` on the corpus and 20,000 random inputs; asserts that inputs reached both the accepting and
/// the refusing side (or the run would prove little).
fn run(target: fn(&[u8]) -> fuzz::Reached, seed: u64) {
    run_on(target, seed, corpus());
}

/// [`run`] over `seeds`.
fn run_on(target: fn(&[u8]) -> fuzz::Reached, seed: u64, seeds: Vec<Vec<u8>>) {
    let mut reached = std::collections::HashMap::new();
    let mut rng = Rng(seed);
    let inputs = seeds
        .iter()
        .cloned()
        .chain((0..20_000).map(|_| rng.input(&seeds)));
    for input in inputs.collect::<Vec<_>>() {
        *reached.entry(target(&input)).or_insert(0usize) += 1;
    }
    eprintln!("{reached:?}");
    for side in [fuzz::Reached::Accepted, fuzz::Reached::Refused] {
        assert!(
            reached.get(&side).is_some_and(|n| *n > 10),
            "few inputs reached {side:?}: {reached:?}"
        );
    }
}

#[test]
fn accept_decoding_and_launch_validation_never_panic_nor_overcommit() {
    run(fuzz::accept, 0x5eed_0001);
}

#[test]
fn resource_conversion_accepts_only_finite_bounded_amounts() {
    run(fuzz::resources, 0x5eed_0002);
}

#[test]
fn plugin_output_never_breaks_the_books() {
    run(fuzz::policy_output, 0x5eed_0003);
}

/// Credential seeds in `fuzz::credentials`' framing: valid sets (a CA, a certificate it signed, its key),
/// and a key that is not the certificate's, an empty authority, DER where PEM belongs.
fn credential_corpus() -> Vec<Vec<u8>> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let frame = |ca: &[u8], cert: &[u8], key: &[u8]| {
        let mut v = Vec::new();
        v.extend((ca.len() as u16).to_le_bytes());
        v.extend((cert.len() as u16).to_le_bytes());
        v.extend(ca);
        v.extend(cert);
        v.extend(key);
        v
    };
    let mut seeds = Vec::new();
    for cn in ["offer-broker", "agent-node1", "framework-batch"] {
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "fuzz CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["localhost".into()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let other = KeyPair::generate().unwrap();
        seeds.push(frame(
            ca_cert.pem().as_bytes(),
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        ));
        seeds.push(frame(
            ca_cert.pem().as_bytes(),
            cert.pem().as_bytes(),
            other.serialize_pem().as_bytes(),
        ));
        seeds.push(frame(
            b"",
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        ));
        seeds.push(frame(ca_cert.der(), cert.der(), &key.serialize_der()));
    }
    seeds
}

#[test]
fn credential_parsing_never_panics() {
    run_on(fuzz::credentials, 0x5eed_0004, credential_corpus());
}

#[test]
fn acl_file_parsing_never_panics() {
    let seeds = [
        "permissive = false\n[[register_frameworks]]\nprincipals = [\"framework-a\"]\nroles = [\"a\"]\n",
        "[[run_tasks]]\nprincipals = [\"kind:framework\"]\nusers = [\"nobody\", \"root\"]\n",
        "[[teardown_frameworks]]\nprincipals = [\"*\"]\nframework_principals = [\"*\"]\n",
        "[[update_weights]]\nprincipals = [\"operator\"]\nroles = [\"*\"]\n[[update_quotas]]\nprincipals = []\nroles = []\n",
        "[[activate_policies]]\nprincipals = [\"kind:operator\"]\npolicies = [\"drf\"]\npermissive = true\n",
        "[[run_tasks]]\nprincipals = \"*\"\nusers = [1]\n",
        "permissive = true",
    ];
    run_on(
        fuzz::acls,
        0x5eed_0005,
        seeds.iter().map(|s| s.as_bytes().to_vec()).collect(),
    );
}

#[test]
fn absurd_resources_are_refused_with_a_clear_error() {
    use allot_common::convert::resources_from_proto;
    for v in [-1.0, f64::NAN, f64::INFINITY, 1e308] {
        let e = resources_from_proto(&[scalar("cpus", v)]).expect_err("refused");
        assert!(e.to_string().contains("cpus"), "{e}");
    }
}

#[test]
fn executor_calls_and_event_streams_never_panic() {
    let uuid = "AAECAwQFBgcICQoLDA0ODw==";
    let ids = r#""framework_id":{"value":"f"},"executor_id":{"value":"e"}"#;
    let seeds = [
        format!(
            r#"{{"type":"SUBSCRIBE",{ids},"subscribe":{{"unacknowledged_tasks":[{{"name":"t","task_id":{{"value":"t"}},"agent_id":{{"value":"a"}},"resources":[{{"name":"cpus","type":"SCALAR","scalar":{{"value":0.5}}}}]}}],"unacknowledged_updates":[]}}}}"#
        ),
        format!(
            r#"{{"type":"UPDATE",{ids},"update":{{"status":{{"task_id":{{"value":"t"}},"state":"TASK_RUNNING","uuid":"{uuid}","data":"aGk="}}}}}}"#
        ),
        format!(
            r#"{{"type":"UPDATE",{ids},"update":{{"status":{{"task_id":{{"value":"t"}},"state":"TASK_STAGING","uuid":"{uuid}"}}}}}}"#
        ),
        format!(
            r#"{{"type":"UPDATE",{ids},"update":{{"status":{{"task_id":{{"value":"t"}},"state":"TASK_BOGUS","uuid":"AAEC"}}}}}}"#
        ),
        format!(r#"{{"type":"MESSAGE",{ids},"message":{{"data":"cGluZw=="}}}}"#),
        format!(r#"{{"type":"HEARTBEAT",{ids}}}"#),
        format!(r#"{{"type":"NONSENSE",{ids},"update":7}}"#),
        "20\n{\"type\":\"HEARTBEAT\"}".into(),
        "3\n{}\n0\n99999999999999999999\n".into(),
    ];
    run_on(
        fuzz::executor_call,
        0x5eed_0006,
        seeds.iter().map(|s| s.as_bytes().to_vec()).collect(),
    );
}
