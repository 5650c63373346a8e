//! Fuzz target bodies. Each takes arbitrary bytes, must never panic, and checks the invariant it names.
//!
//! `fuzz/` runs them under libFuzzer (`cargo fuzz run accept|resources|policy_output|credentials|acls|executor_call`, which needs a nightly
//! toolchain and cargo-fuzz); `tests/tests/fuzz.rs` runs them in every CI run on stable, over a corpus of
//! adversarial inputs and deterministic pseudo-random ones. Each returns what the input reached, so that the
//! stable run can check that its inputs reach both the accepting and the refusing side.

/// How far an input got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reached {
    /// The bytes did not decode.
    Undecoded,
    /// Decoded, and refused with an error.
    Refused,
    /// Decoded and accepted (and the invariant held).
    Accepted,
}

use allot_allocator::books::Books;
use allot_proto::common::TaskInfo;
use allot_proto::scheduler::{AcceptRequest, operation};
use allot_resources::Resources;
use prost::Message as _;

/// What the offer in [`accept`] holds.
pub const OFFERED: &str = "cpus:4;mem:1024;disk:2048;ports:[31000-31010]";

/// Protocol decoding and LAUNCH validation: `data` as an `AcceptRequest` whose LAUNCH operations are checked
/// against an offer of [`OFFERED`] on agent `a1`. A request that decodes either is refused with a message or
/// launches tasks that together fit the offer.
pub fn accept(data: &[u8]) -> Reached {
    let Ok(req) = AcceptRequest::decode(data) else {
        return Reached::Undecoded;
    };
    let tasks: Vec<TaskInfo> = req
        .operations
        .into_iter()
        .filter_map(|o| match o.operation {
            Some(operation::Operation::Launch(l)) => Some(l.task_infos),
            _ => None,
        })
        .flatten()
        .collect();
    let offered: Resources = OFFERED.parse().expect("offer");
    match allot_offer_broker::validate::validate_launch("a1", &offered, tasks, |_| false)
        .map_err(tonic::Status::from)
    {
        Ok(valid) => {
            let mut used = Resources::new();
            for t in &valid {
                used.add(&t.resources);
                assert_eq!(t.info.agent_id, "a1", "a task launched on another agent");
            }
            assert!(
                offered.contains(&used),
                "overcommitted: {used} of {offered}"
            );
            Reached::Accepted
        }
        Err(status) => {
            assert!(!status.message().is_empty(), "a refusal without a reason");
            Reached::Refused
        }
    }
}

/// Resource conversion: `data` as a `TaskInfo` whose resources are converted. Conversion either fails or gives
/// scalars that are finite, non-negative and at most [`allot_policy::resources::MAX_SCALAR`].
pub fn resources(data: &[u8]) -> Reached {
    let Ok(task) = TaskInfo::decode(data) else {
        return Reached::Undecoded;
    };
    match allot_common::convert::resources_from_proto(&task.resources) {
        Ok(r) => {
            for (name, milli) in r.scalars() {
                let v = milli as f64 / 1000.0;
                assert!(
                    (0.0..=allot_policy::resources::MAX_SCALAR).contains(&v),
                    "{name} = {v} accepted"
                );
            }
            Reached::Accepted
        }
        Err(e) => {
            assert!(!e.to_string().is_empty(), "a refusal without a reason");
            Reached::Refused
        }
    }
}

/// A little reader of fuzz bytes.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        let (head, rest) = self.0.split_at_checked(2)?;
        self.0 = rest;
        Some(u16::from_le_bytes(head.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        let (head, rest) = self.0.split_at_checked(8)?;
        self.0 = rest;
        Some(i64::from_le_bytes(head.try_into().ok()?))
    }
}

/// Validation of plugin output: `data` read as a list of grants in the plugin interfaces' index form (framework
/// and agent indices, an amount per resource kind, unreserved and reserved), as a native or WASM policy
/// returns them, over the snapshot of three agents (one with a reservation for role `db`) and three
/// frameworks (one capped by a quota). Each grant is read back (`GrantReader`) and applied to the books;
/// whatever is refused, the books' invariants hold after every grant: nothing offered twice, nothing beyond an
/// agent's total, reservations only to their role.
/// Returns [`Reached::Accepted`] if any grant was applied, else [`Reached::Refused`] if any was read,
/// else [`Reached::Undecoded`].
pub fn policy_output(data: &[u8]) -> Reached {
    let r = |s: &str| -> Resources { s.parse().expect("resources") };
    let mut books = Books::new("o");
    books.set_agent("a1", r("cpus:4;mem:1024"), Default::default());
    books.set_agent(
        "a2",
        r("cpus:8;mem:4096;ports:[31000-31005]"),
        [("db".to_string(), r("cpus:2;mem:512"))].into(),
    );
    books.set_agent("a3", r("cpus:1;mem:128;disk:10"), Default::default());
    for a in ["a1", "a2", "a3"] {
        books.set_reachable(a, true);
    }
    for (fw, role) in [("f1", "*"), ("f2", "db"), ("f3", "web")] {
        books.add_framework(fw, role, 0);
        books.activate(fw, false);
    }
    books.set_role(
        "web",
        allot_allocator::books::RoleConfig {
            weight: 1.0,
            quota_limit: Some("cpus:1;mem:256".parse().unwrap()),
            preemptible: true,
            quota_guarantee: None,
        },
    );
    let snap = books.snapshot(0.0);
    let kinds = allot_policy::indexed::kinds(&snap);
    let mut reader = allot_policy::indexed::GrantReader::new(&snap, &kinds);
    let mut input = Bytes(data);
    let mut i = 0;
    let mut reached = Reached::Undecoded;
    while let (Some(fw), Some(agent), Some(shape)) = (input.u8(), input.u8(), input.u8()) {
        // The low bits choose each vector's length: none, one per kind, or (to test the check) one too many.
        let len = |bits: u8| match bits % 3 {
            0 => 0,
            1 => kinds.len(),
            _ => kinds.len() + 1,
        };
        let mut vector = |n: usize| -> Vec<i64> { (0..n).map_while(|_| input.i64()).collect() };
        let resources = vector(len(shape));
        let reserved = vector(len(shape >> 2));
        if let Ok(grant) = reader.read(
            i,
            u32::from(fw % 5),
            u32::from(agent % 5),
            &resources,
            &reserved,
        ) {
            reached = match books.apply_grant(&snap, &grant, 0.0) {
                Ok(_) => Reached::Accepted,
                Err(_) if reached == Reached::Accepted => Reached::Accepted,
                Err(_) => Reached::Refused,
            };
        }
        books
            .check_invariants()
            .unwrap_or_else(|e| panic!("grant {i} broke the books: {e}"));
        i += 1;
    }
    reached
}

/// Credential parsing: `data` as `[authority length: u16 LE][certificate length: u16 LE][authority PEM]
/// [certificate PEM][key PEM]` through `allot_common::tls::from_pem`, and the certificate part as DER through
/// `allot_common::tls::principal_of` (and, when the material loads, its first certificate too). Nothing may
/// panic; material that does not load is refused with an error.
pub fn credentials(data: &[u8]) -> Reached {
    let mut input = Bytes(data);
    let lens = (input.u16(), input.u16());
    let (Some(ca_len), Some(cert_len)) = lens else {
        return Reached::Undecoded;
    };
    let rest = input.0;
    let ca_end = usize::from(ca_len).min(rest.len());
    let cert_end = (ca_end + usize::from(cert_len)).min(rest.len());
    let (ca, cert, key) = (&rest[..ca_end], &rest[ca_end..cert_end], &rest[cert_end..]);
    let _ = allot_common::tls::principal_of(cert);
    match allot_common::tls::from_pem(ca, cert, key) {
        Ok(_) => {
            use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject as _};
            let der =
                CertificateDer::from_pem_slice(cert).expect("a certificate that loaded parses");
            let _ = allot_common::tls::principal_of(&der);
            Reached::Accepted
        }
        Err(_) => Reached::Refused,
    }
}

/// An ACL file's text (`allot_server::acl`), as UTF-8 bytes. Never panics; a file that parses decides the same
/// way twice, and an action it has no rule for is decided by `permissive` alone.
pub fn acls(data: &[u8]) -> Reached {
    use allot_server::acl::{ACTIONS, AclSet, Decision};
    let Ok(text) = std::str::from_utf8(data) else {
        return Reached::Undecoded;
    };
    match AclSet::parse(text) {
        Err(_) => Reached::Refused,
        Ok(set) => {
            for (action, _) in ACTIONS {
                let d = set.decide(action, "framework-x", "framework", &["r", "nobody"]);
                assert_eq!(
                    d,
                    set.decide(action, "framework-x", "framework", &["r", "nobody"])
                );
                if set.rules.get(action).is_none_or(|r| r.is_empty()) {
                    assert_eq!(d == Decision::Allow, set.permissive, "{action}: {text:?}");
                }
            }
            Reached::Accepted
        }
    }
}

/// An executor API request body (Mesos' v1 executor `Call` in JSON, `allot_mesos::executor`), and the same
/// bytes as a RecordIO event stream. Never panics; a call that validates converts to Allot's protocol (an
/// UPDATE's status keeps its task ID and 16-byte uuid and is never TASK_STAGING), and a stream yields only
/// whole, non-empty records.
pub fn executor_call(data: &[u8]) -> Reached {
    use allot_mesos::executor::{Call, Valid};
    let mut stream = allot_mesos::recordio::Decoder::new(1 << 16);
    stream.push(data);
    while let Ok(Some(record)) = stream.next_record() {
        assert!(!record.is_empty());
    }
    let Ok(call) = serde_json::from_slice::<Call>(data) else {
        return Reached::Undecoded;
    };
    match call.validate() {
        Err(why) => {
            assert!(!why.is_empty());
            Reached::Refused
        }
        Ok((framework, executor, valid)) => {
            assert!(!framework.is_empty() && !executor.is_empty());
            if let Valid::Update(status) = valid {
                let s = allot_mesos::convert::status_from_v1(&status);
                assert_eq!(s.uuid.len(), 16);
                assert_eq!(s.task_id, status.task_id.value);
                assert_ne!(s.state(), allot_proto::common::TaskState::TaskStaging);
            }
            Reached::Accepted
        }
    }
}
