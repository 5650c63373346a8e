//! Mutual TLS on a real socket (issue 23, the transport): certificates from the real `allot certs init`, a
//! gRPC server through `allot_server::grpc::serve_tls`, clients through `allot_common::grpc::tls_channel`.
//! Plaintext and wrong-authority callers are refused; the server learns each caller's principal; a rotated
//! authority is used by new connections without a restart.

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
    let dialer = allot_common::grpc::Dialer::tls(
        Tls::open(TlsFiles::in_dir(ours.path(), "allocator")).unwrap(),
    );
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
