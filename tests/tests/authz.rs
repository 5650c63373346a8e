//! Identities on a real, secured cluster (issue 23): each call is made with a certificate of the cluster's
//! authority, and what the caller may do follows from the principal it names. Framework B cannot act on
//! framework A (kill, acknowledge, reconcile, re-subscribe as, tear down); an operator may tear it down; a
//! framework cannot load or activate a policy, set a role's weight, call an agent directly or send status
//! updates; an agent cannot register a framework, nor register, heartbeat or report tasks as another agent. A
//! task runs as the Unix user it names, and one naming a user the agent does not have fails. The ACL file
//! decides roles, task users and weights, and is read again when it changes. Operator actions, allowed or
//! refused, are in the audit trail (`allot audit`), which only operators may read.

use allot_proto::common::{FrameworkInfo, TaskState};
use allot_proto::scheduler as pb;
use allot_proto::scheduler::scheduler_client::SchedulerClient;
use allot_tests::{Cluster, TestFramework, task};
use tonic::Code;

fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) {
    match r {
        Err(s) if s.code() == Code::PermissionDenied => {
            assert!(
                s.message().contains("principal '"),
                "{what}: the refusal names the principal: {}",
                s.message()
            );
        }
        other => panic!("{what}: expected PERMISSION_DENIED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framework_acts_only_on_itself_and_an_operator_may_tear_it_down() {
    let mut cluster = Cluster::start().await;
    cluster.add_agent("cpus:2;mem:512").await;
    let mut a = TestFramework::subscribe_as(&cluster, "framework-a", "a", "*").await;
    a.launch(task("t", "sleep 60", 0.5, 64.0)).await;
    a.await_state("t", TaskState::TaskRunning).await;

    // B, another framework principal, on its own connection.
    let mut b = SchedulerClient::new(
        cluster
            .dialer("framework-b")
            .channel(&cluster.broker.addr.to_string())
            .unwrap(),
    );
    denied(
        "B kills A's task",
        b.kill(pb::KillRequest {
            framework_id: a.id.clone(),
            task_id: "t".into(),
            ..Default::default()
        })
        .await,
    );
    denied(
        "B reconciles A's tasks",
        b.reconcile(pb::ReconcileRequest {
            framework_id: a.id.clone(),
            tasks: vec![],
        })
        .await,
    );
    denied(
        "B acknowledges A's update",
        b.acknowledge(pb::AcknowledgeRequest {
            framework_id: a.id.clone(),
            task_id: "t".into(),
            uuid: vec![0; 16],
            ..Default::default()
        })
        .await,
    );
    denied(
        "B suppresses A",
        b.suppress(pb::SuppressRequest {
            framework_id: a.id.clone(),
        })
        .await,
    );
    denied(
        "B tears A down",
        b.teardown(pb::TeardownRequest {
            framework_id: a.id.clone(),
        })
        .await,
    );
    denied(
        "B re-subscribes as A",
        b.subscribe(pb::SubscribeRequest {
            framework_info: Some(FrameworkInfo {
                name: "a".into(),
                framework_id: a.id.clone(),
                ..Default::default()
            }),
        })
        .await,
    );
    denied(
        "B subscribes naming A's principal",
        b.subscribe(pb::SubscribeRequest {
            framework_info: Some(FrameworkInfo {
                name: "impostor".into(),
                principal: "framework-a".into(),
                ..Default::default()
            }),
        })
        .await,
    );
    // Nothing of that reached A's task; A itself may act on it.
    a.client
        .reconcile(pb::ReconcileRequest {
            framework_id: a.id.clone(),
            tasks: vec![],
        })
        .await
        .expect("A reconciles its own tasks");
    let recorded = allot_tests::recorded_framework(&cluster.etcd.store().await, &a.id).await;
    assert_eq!(
        recorded.info.expect("info").principal,
        "framework-a",
        "the framework's principal is recorded with it, from its certificate"
    );
    // An agent's certificate cannot register a framework.
    let mut agent_as_framework = SchedulerClient::new(
        cluster
            .dialer("agent-localhost")
            .channel(&cluster.broker.addr.to_string())
            .unwrap(),
    );
    denied(
        "an agent subscribes as a framework",
        agent_as_framework
            .subscribe(pb::SubscribeRequest {
                framework_info: Some(FrameworkInfo {
                    name: "sneaky".into(),
                    ..Default::default()
                }),
            })
            .await,
    );
    // The operator may tear A down (Mesos' teardown_frameworks).
    let mut operator = SchedulerClient::new(
        cluster
            .operator()
            .channel(&cluster.broker.addr.to_string())
            .unwrap(),
    );
    operator
        .teardown(pb::TeardownRequest {
            framework_id: a.id.clone(),
        })
        .await
        .expect("the operator tears A down");
    allot_tests::eventually("A's task is killed with the framework", || async {
        cluster.tasks(&a.id).await.iter().any(|t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.state() == TaskState::TaskKilled)
        })
    })
    .await;
    assert!(
        !allot_tests::recorded_framework(&cluster.etcd.store().await, &a.id)
            .await
            .active,
        "A is torn down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framework_cannot_administer_policies_roles_agents_or_updates() {
    use allot_proto::agent::agent_client::AgentClient;
    use allot_proto::allocator::policy_admin_client::PolicyAdminClient;
    use allot_proto::registry::registry_client::RegistryClient;
    let mut cluster = Cluster::start().await;
    let agent = cluster.add_agent("cpus:1;mem:256").await;
    let fw = cluster.dialer("framework-default");
    let allocator = cluster.allocator.addr.to_string();

    let mut admin = PolicyAdminClient::new(fw.channel(&allocator).unwrap());
    denied(
        "a framework loads a policy",
        admin
            .load(allot_proto::allocator::LoadPolicyRequest {
                artifact: b"\0asm".to_vec(),
                ..Default::default()
            })
            .await,
    );
    denied(
        "a framework activates a policy",
        admin
            .activate(allot_proto::allocator::ActivatePolicyRequest {
                reference: "priority".into(),
            })
            .await,
    );
    denied(
        "a framework rolls a policy back",
        admin
            .rollback(allot_proto::allocator::RollbackPolicyRequest {})
            .await,
    );
    // Reading is allowed; the operator may activate.
    admin
        .status(allot_proto::allocator::PolicyStatusRequest {})
        .await
        .expect("a framework reads the policy status");
    PolicyAdminClient::new(cluster.operator().channel(&allocator).unwrap())
        .activate(allot_proto::allocator::ActivatePolicyRequest {
            reference: "priority".into(),
        })
        .await
        .expect("the operator activates a policy");

    let registry = cluster.registry.addr.to_string();
    let role = allot_proto::common::Role {
        name: "greedy".into(),
        weight: 100.0,
        ..Default::default()
    };
    denied(
        "a framework sets a role's weight",
        RegistryClient::new(fw.channel(&registry).unwrap())
            .set_role(allot_proto::registry::SetRoleRequest {
                role: Some(role.clone()),
            })
            .await,
    );
    RegistryClient::new(cluster.operator().channel(&registry).unwrap())
        .set_role(allot_proto::registry::SetRoleRequest { role: Some(role) })
        .await
        .expect("the operator sets a role's weight");
    // The audit trail has both: the operator's change and the framework's refused one, newest first; only an
    // operator may read it.
    let audit = || async {
        RegistryClient::new(cluster.operator().channel(&registry).unwrap())
            .list_audit(allot_proto::registry::ListAuditRequest { limit: 10 })
            .await
            .unwrap()
            .into_inner()
            .records
    };
    allot_tests::eventually("the role changes are in the audit trail", || async {
        let records = audit().await;
        records.iter().any(|r| {
            r.principal == "framework-default" && r.action == "update_weights" && !r.allowed
        }) && records
            .iter()
            .any(|r| r.principal == "operator" && r.action == "update_weights" && r.allowed)
    })
    .await;
    assert!(
        audit()
            .await
            .iter()
            .any(|r| r.service == "allocator" && r.action == "activate_policies" && r.allowed),
        "the operator's policy activation is in the trail"
    );
    denied(
        "a framework reads the audit trail",
        RegistryClient::new(fw.channel(&registry).unwrap())
            .list_audit(allot_proto::registry::ListAuditRequest::default())
            .await,
    );
    let out = std::process::Command::new(allot_tests::procs::bin_dir().join("allot"))
        .args(cluster.cli_args())
        .args(["audit", "--json"])
        .output()
        .expect("allot runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("\"update_weights\"")
            && text.contains("\"operator\""),
        "`allot audit` lists the operator's actions: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    denied(
        "a framework registers an agent",
        RegistryClient::new(fw.channel(&registry).unwrap())
            .heartbeat(allot_proto::registry::HeartbeatRequest {
                agent_id: "agent-x".into(),
            })
            .await,
    );

    denied(
        "a framework launches on an agent directly",
        AgentClient::new(fw.channel(&agent.service.addr.to_string()).unwrap())
            .launch_tasks(allot_proto::agent::LaunchTasksRequest {
                framework_id: "fw-x".into(),
                ..Default::default()
            })
            .await,
    );
    denied(
        "a framework sends a status update",
        allot_proto::agent::status_updates_client::StatusUpdatesClient::new(
            fw.channel(&cluster.broker.addr.to_string()).unwrap(),
        )
        .update(allot_proto::agent::StatusUpdateRequest::default())
        .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registers_and_heartbeats_only_as_itself() {
    use allot_proto::registry::registry_client::RegistryClient;
    use allot_proto::registry::{HeartbeatRequest, RegisterAgentRequest};
    let mut cluster = Cluster::start().await;
    let agent = cluster.add_agent("cpus:1;mem:256").await;
    let id = std::fs::read_to_string(agent.work_dir.join("agent_id"))
        .unwrap()
        .trim()
        .to_string();
    let registry = cluster.registry.addr.to_string();
    let mut other = RegistryClient::new(cluster.dialer("agent-other").channel(&registry).unwrap());
    denied(
        "another agent heartbeats for it",
        other
            .heartbeat(HeartbeatRequest {
                agent_id: id.clone(),
            })
            .await,
    );
    let info = allot_proto::common::AgentInfo {
        address: "127.0.0.1:9".into(),
        resources: allot_common::convert::resources_to_proto(&"cpus:64".parse().unwrap()),
        ..Default::default()
    };
    denied(
        "another agent re-registers under its ID",
        other
            .register_agent(RegisterAgentRequest {
                info: Some(info.clone()),
                agent_id: id.clone(),
            })
            .await,
    );
    // Nor may it report that agent's tasks to the broker.
    let forged = allot_proto::common::TaskStatus {
        task_id: "t".into(),
        agent_id: id.clone(),
        state: TaskState::TaskFinished as i32,
        ..Default::default()
    };
    let broker = cluster.broker.addr.to_string();
    denied(
        "another agent sends its updates",
        allot_proto::agent::status_updates_client::StatusUpdatesClient::new(
            cluster.dialer("agent-other").channel(&broker).unwrap(),
        )
        .update(allot_proto::agent::StatusUpdateRequest {
            status: Some(forged),
            ..Default::default()
        })
        .await,
    );
    // Under a new ID of its own, the other agent registers.
    other
        .register_agent(RegisterAgentRequest {
            info: Some(info),
            agent_id: String::new(),
        })
        .await
        .expect("an agent registers as itself");
    // The real agent's own heartbeats go on.
    tokio::time::sleep(allot_tests::ClusterOptions::default().agent_timeout * 2).await;
    let listed = RegistryClient::new(cluster.operator().channel(&registry).unwrap())
        .list_agents(allot_proto::registry::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    let own = listed
        .iter()
        .find(|a| a.record.as_ref().is_some_and(|r| r.agent_id == id))
        .expect("the agent is listed");
    assert!(own.reachable, "the agent is still reachable");
    assert_eq!(
        own.record.as_ref().unwrap().principal,
        "agent-localhost",
        "its registering principal is recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_as_the_user_it_names_and_an_unknown_user_fails_it() {
    let mut cluster = Cluster::start().await;
    let agent = cluster.add_agent("cpus:2;mem:512").await;
    let mut fw = TestFramework::subscribe(&cluster, "users", "*").await;
    let root = nix::unistd::Uid::effective().is_root();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("Debian has user nobody");
    let mut as_nobody = task("who", "id -u > uid; id -g > gid; touch mine", 0.5, 64.0);
    as_nobody.command.as_mut().unwrap().user = "nobody".into();
    fw.launch(as_nobody).await;
    if root {
        fw.await_state("who", TaskState::TaskFinished).await;
        let sandbox = allot_agent::executor::sandbox_path(&agent.work_dir, &fw.id, "who");
        let read = |f: &str| {
            std::fs::read_to_string(sandbox.join(f))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(
            read("uid"),
            nobody.uid.to_string(),
            "the task ran as nobody"
        );
        assert_eq!(read("gid"), nobody.gid.to_string(), "with nobody's group");
        use std::os::unix::fs::MetadataExt as _;
        let owner = std::fs::metadata(&sandbox).unwrap().uid();
        assert_eq!(owner, nobody.uid.as_raw(), "the sandbox belongs to nobody");
        let made = std::fs::metadata(sandbox.join("mine")).unwrap().uid();
        assert_eq!(made, nobody.uid.as_raw(), "what the task makes is nobody's");
    } else {
        // An agent not run as root cannot switch users: the task fails and says why.
        let s = fw.await_state("who", TaskState::TaskFailed).await;
        assert!(s.message.contains("not root"), "{}", s.message);
    }
    let mut ghost = task("ghost", "true", 0.5, 64.0);
    ghost.command.as_mut().unwrap().user = "no-such-user-here".into();
    fw.launch(ghost).await;
    let s = fw.await_state("ghost", TaskState::TaskFailed).await;
    assert!(
        s.message
            .contains("user 'no-such-user-here' does not exist on this agent"),
        "{}",
        s.message
    );
}

const ACLS: &str = r#"
[[register_frameworks]]
principals = ["framework-a"]
roles = ["a"]

[[run_tasks]]
principals = ["framework-a"]
users = ["nobody"]

[[update_weights]]
principals = ["kind:operator"]
roles = ["a"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_file_decides_roles_users_and_weights_and_is_read_again_when_it_changes() {
    use allot_proto::registry::registry_client::RegistryClient;
    let mut cluster = Cluster::start_with(allot_tests::ClusterOptions {
        acls: Some(ACLS.into()),
        ..Default::default()
    })
    .await;
    cluster.add_agent("cpus:2;mem:512").await;
    let broker = cluster.broker.addr.to_string();
    let subscribe = |principal: &str, role: &str| {
        let mut c = SchedulerClient::new(cluster.dialer(principal).channel(&broker).unwrap());
        let role = role.to_string();
        async move {
            c.subscribe(pb::SubscribeRequest {
                framework_info: Some(FrameworkInfo {
                    name: "x".into(),
                    roles: vec![role],
                    ..Default::default()
                }),
            })
            .await
            .map(|_| ())
        }
    };
    denied("framework-a in role b", subscribe("framework-a", "b").await);
    denied(
        "framework-b, which no rule names",
        subscribe("framework-b", "a").await,
    );

    let mut a = TestFramework::subscribe_as(&cluster, "framework-a", "a", "a").await;
    let offer = a.offers().await.remove(0);
    let as_root = {
        let mut t = task("root", "true", 0.5, 64.0);
        t.command.as_mut().unwrap().user = "root".into();
        t
    };
    denied(
        "a task as root",
        a.accept(&offer.offer_id, vec![as_root], 0.0).await,
    );
    let executor_as_root = {
        let mut t = task("xroot", "true", 0.5, 64.0);
        let mut command = t.command.take().unwrap();
        command.user = "root".into();
        t.executor = Some(allot_proto::common::ExecutorInfo {
            executor_id: "e".into(),
            command: Some(command),
            ..Default::default()
        });
        t
    };
    denied(
        "a task whose executor runs as root",
        a.accept(&offer.offer_id, vec![executor_as_root], 0.0).await,
    );
    // No reserve_resources rule names framework-a: its RESERVE is refused, and the offer stays its.
    let reserve = pb::AcceptRequest {
        framework_id: a.id.clone(),
        offer_ids: vec![offer.offer_id.clone()],
        operations: vec![pb::Operation {
            operation: Some(pb::operation::Operation::Reserve(pb::Reserve {
                resources: vec![allot_proto::common::Resource {
                    name: "cpus".into(),
                    scalar: 1.0,
                    role: "a".into(),
                    ..Default::default()
                }],
            })),
        }],
        filters: None,
    };
    denied(
        "a RESERVE without a reserve_resources rule",
        a.client.accept(reserve).await,
    );
    let mut as_nobody = task("ok", "true", 0.5, 64.0);
    as_nobody.command.as_mut().unwrap().user = "nobody".into();
    a.accept(&offer.offer_id, vec![as_nobody], 0.0)
        .await
        .expect("a task as nobody is allowed");
    let expected = match nix::unistd::Uid::effective().is_root() {
        true => TaskState::TaskFinished,
        false => TaskState::TaskFailed,
    };
    a.await_state("ok", expected).await;

    let registry = cluster.registry.addr.to_string();
    let set_role = |name: &str| {
        let mut c = RegistryClient::new(cluster.operator().channel(&registry).unwrap());
        let role = allot_proto::common::Role {
            name: name.into(),
            weight: 2.0,
            ..Default::default()
        };
        async move {
            c.set_role(allot_proto::registry::SetRoleRequest { role: Some(role) })
                .await
                .map(|_| ())
        }
    };
    set_role("a").await.expect("the operator sets role a");
    denied("the operator sets role b", set_role("b").await);
    // The operator edits the file; the registry reads it again within a second.
    std::fs::write(
        cluster.acls_path(),
        ACLS.replace(
            "[[update_weights]]\nprincipals = [\"kind:operator\"]\nroles = [\"a\"]",
            "[[update_weights]]\nprincipals = [\"kind:operator\"]\nroles = [\"a\", \"b\"]",
        ),
    )
    .unwrap();
    allot_tests::eventually("the changed ACL file allows role b", || async {
        set_role("b").await.is_ok()
    })
    .await;
}
