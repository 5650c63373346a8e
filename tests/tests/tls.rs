//! Mutual TLS on a real socket (issue 23, the transport): certificates from the real `allot certs init`, a
//! gRPC server through `allot_server::grpc::serve_tls`, clients through `allot_common::grpc::tls_channel`.
//! Plaintext and wrong-authority callers are refused; the server learns each caller's principal; a rotated
//! authority is used by new connections without a restart. Every service of a cluster and its etcd refuse
//! plaintext, another authority and an expired certificate; a service without material does not start.

use allot_common::tls::{Principal, Tls, TlsFiles};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Runs `allot certs init DIR` (the real binary) with `extra` arguments.
fn certs_init(dir: &Path, extra: &[&str]) {
    let status = std::process::Command::new(allot_tests::procs::bin_dir().join("allot"))
        .args(["certs", "init"])
        .arg(dir)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("allot runs");
    assert!(status.success(), "allot certs init {}", dir.display());
}

/// A health server over mTLS as principal `offer-broker` of `dir`, on a free loopback port; records the
/// principal of every caller. Returns its address.
async fn serve(dir: &Path, callers: Arc<Mutex<Vec<Option<Principal>>>>) -> String {
    let tls = Tls::open(TlsFiles::in_dir(dir, "offer-broker")).expect("broker material");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let health = allot_server::grpc::health().await;
    let seen = tonic::service::interceptor::InterceptedService::new(
        health,
        move |req: tonic::Request<()>| {
            callers
                .lock()
                .unwrap()
                .push(allot_server::grpc::peer_principal(&req));
            Ok(req)
        },
    );
    let router = allot_server::grpc::server().add_service(seen);
    tokio::spawn(allot_server::grpc::serve_tls(
        router,
        listener,
        std::future::pending(),
        tls,
    ));
    addr
}

/// One health check through `channel`; `Err` with the status if it failed.
async fn check(channel: allot_common::grpc::Channel) -> Result<(), tonic::Status> {
    let mut client = HealthClient::new(channel);
    let call = client.check(HealthCheckRequest {
        service: String::new(),
    });
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no answer in 10 s"))?
        .map(|_| ())
}

fn tls_client(dir: &Path, name: &str, addr: &str) -> allot_common::grpc::Channel {
    let tls = Tls::open(TlsFiles::in_dir(dir, name)).expect("client material");
    // Servers are reached by a name their certificate holds (localhost, 127.0.0.1 by default).
    allot_common::grpc::tls_channel(addr, tls).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_its_own_authority_only_and_names_the_caller() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    certs_init(ours.path(), &["--agent", "node1"]);
    certs_init(theirs.path(), &[]);
    let callers = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(ours.path(), callers.clone()).await;

    check(tls_client(ours.path(), "operator", &addr))
        .await
        .expect("the operator's certificate is admitted");
    check(tls_client(ours.path(), "agent-node1", &addr))
        .await
        .expect("an agent's certificate is admitted");
    // The same through a service's dialer, as replicas are followed.
    let dialer = allot_common::grpc::Dialer::new(Some(
        Tls::open(TlsFiles::in_dir(ours.path(), "allocator")).unwrap(),
    ));
    let replicas = dialer.replicas(&addr).unwrap();
    replicas
        .call(|ch| async move {
            HealthClient::new(ch)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
        })
        .await
        .expect("a replica set dialed over TLS");
    assert_eq!(
        *callers.lock().unwrap(),
        [
            Some(Principal {
                name: "operator".into(),
                kind: "operator".into()
            }),
            Some(Principal {
                name: "agent-node1".into(),
                kind: "agent".into()
            }),
            Some(Principal {
                name: "allocator".into(),
                kind: "service".into()
            })
        ],
        "each call carries its caller's principal"
    );

    let plaintext = allot_common::grpc::channel(&addr).unwrap();
    assert!(check(plaintext).await.is_err(), "plaintext is refused");
    assert!(
        check(tls_client(theirs.path(), "operator", &addr))
            .await
            .is_err(),
        "a certificate of another authority is refused"
    );
    assert_eq!(
        callers.lock().unwrap().len(),
        3,
        "no refused call reached a handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_authority_is_used_by_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let old = tempfile::tempdir().unwrap();
    certs_init(dir.path(), &[]);
    // Keep a copy of the old operator's material.
    for f in ["ca.pem", "operator.pem", "operator-key.pem"] {
        std::fs::copy(dir.path().join(f), old.path().join(f)).unwrap();
    }
    let addr = serve(dir.path(), Arc::new(Mutex::new(Vec::new()))).await;
    check(tls_client(old.path(), "operator", &addr))
        .await
        .expect("admitted before the rotation");
    // Rotate: a new authority and certificates, written over the old files.
    std::thread::sleep(allot_common::tls::RELOAD_CHECK);
    certs_init(dir.path(), &["--force"]);
    check(tls_client(dir.path(), "operator", &addr))
        .await
        .expect("a certificate of the new authority is admitted on a new connection");
    assert!(
        check(tls_client(old.path(), "operator", &addr))
            .await
            .is_err(),
        "one of the old authority is refused"
    );
}

/// Principal `name` issued by the authority in `dir`, valid only in the past (expired a day ago).
fn issue_expired(dir: &Path, name: &str) {
    use allot_server::certs::{Principal, Validity, issue, kind_of};
    let now = time::OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - time::Duration::days(3),
        not_after: now - time::Duration::days(1),
    };
    issue(dir, &[Principal::new(name, kind_of(name))], &[], validity).expect("issued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_and_etcd_refuse_plaintext_another_authority_and_an_expired_certificate() {
    let mut cluster = allot_tests::Cluster::start().await;
    let agent = cluster.add_agent("cpus:1;mem:128").await;
    let theirs = tempfile::tempdir().unwrap();
    certs_init(theirs.path(), &[]);
    let ours = cluster
        .etcd
        .tls_dir()
        .expect("a secured cluster")
        .to_path_buf();
    issue_expired(&ours, "framework-expired");
    let services = [
        ("registry", cluster.registry.addr.to_string()),
        ("allocator", cluster.allocator.addr.to_string()),
        ("offer-broker", cluster.broker.addr.to_string()),
        ("agent", agent.service.addr.to_string()),
    ];
    for (name, addr) in &services {
        check(cluster.operator().channel(addr).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{name} admits the operator: {e}"));
        assert!(
            check(allot_common::grpc::channel(addr).unwrap())
                .await
                .is_err(),
            "{name} refuses plaintext"
        );
        assert!(
            check(tls_client(theirs.path(), "operator", addr))
                .await
                .is_err(),
            "{name} refuses another authority's certificate"
        );
        assert!(
            check(tls_client(&ours, "framework-expired", addr))
                .await
                .is_err(),
            "{name} refuses an expired certificate"
        );
    }
    // etcd (run with --client-cert-auth): the same three refusals.
    let etcd = cluster.etcd.addr().to_string();
    let reads = |tls: Option<Arc<Tls>>| {
        let etcd = etcd.clone();
        async move {
            let store = tokio::time::timeout(
                Duration::from_secs(10),
                allot_server::Store::connect(&[etcd], "/t", tls.as_ref()),
            )
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
            tokio::time::timeout(Duration::from_secs(10), store.exists("/t/x"))
                .await
                .map_err(|_| "no answer".to_string())?
                .map_err(|e| e.to_string())
        }
    };
    let own = Tls::open(TlsFiles::in_dir(&ours, "registry")).unwrap();
    reads(Some(own)).await.expect("etcd admits a service");
    assert!(reads(None).await.is_err(), "etcd refuses plaintext");
    let foreign = Tls::open(TlsFiles::in_dir(theirs.path(), "registry")).unwrap();
    assert!(
        reads(Some(foreign)).await.is_err(),
        "etcd refuses another authority's certificate"
    );
    let expired = Tls::open(TlsFiles::in_dir(&ours, "framework-expired")).unwrap();
    assert!(
        reads(Some(expired)).await.is_err(),
        "etcd refuses an expired certificate"
    );
}

#[test]
fn a_service_without_tls_material_does_not_start_and_insecure_is_warned_about() {
    let empty = tempfile::tempdir().unwrap();
    let registry = allot_tests::procs::bin_dir().join("allot-registry");
    let run = |extra: &[&str]| {
        std::process::Command::new(&registry)
            .args(["--listen", "127.0.0.1:0", "--etcd-endpoints", "127.0.0.1:9"])
            .arg("--tls-dir")
            .arg(empty.path())
            .args(extra)
            .env("ALLOT_LOG", "warn")
            .env_remove("ALLOT_INSECURE")
            .output()
            .expect("allot-registry runs")
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no TLS material") && stderr.contains("allot certs init"),
        "the error says what is missing and how to make it: {stderr}"
    );
    // --insecure starts (and waits for an etcd at port 9), warning that it is plaintext.
    let mut child = std::process::Command::new(&registry)
        .args(["--listen", "127.0.0.1:0", "--etcd-endpoints", "127.0.0.1:9"])
        .arg("--tls-dir")
        .arg(empty.path())
        .arg("--insecure")
        .env("ALLOT_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("allot-registry runs");
    std::thread::sleep(Duration::from_secs(2));
    let _ = child.kill();
    let out = child.wait_with_output().expect("exit status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("running without TLS"), "{stderr}");
    assert!(!stderr.contains("no TLS material"), "{stderr}");
    // The CLI says the same.
    let cli = std::process::Command::new(allot_tests::procs::bin_dir().join("allot"))
        .args(["--registry", "127.0.0.1:9", "agents", "--tls-dir"])
        .arg(empty.path())
        .env_remove("ALLOT_INSECURE")
        .output()
        .expect("allot runs");
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(
        !cli.status.success() && stderr.contains("no TLS material"),
        "{stderr}"
    );
}
