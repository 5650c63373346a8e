//! Write a framework's own executor the way Mesos executors are written: implement [`Executor`], call
//! [`run_executor`] from the program the framework names in `TaskInfo.executor`, and report tasks through the
//! [`ExecutorDriver`] (Mesos' `ExecutorDriver`).
//!
//! The driver speaks Mesos' v1 executor HTTP API to the agent that started the program (its environment says
//! where: `MESOS_AGENT_ENDPOINT`, `MESOS_FRAMEWORK_ID`, `MESOS_EXECUTOR_ID`,
//! `MESOS_EXECUTOR_AUTHENTICATION_TOKEN`): it subscribes, dispatches LAUNCH, KILL, MESSAGE, SHUTDOWN and
//! ERROR to the callbacks, and sends the executor's status updates and messages in the order they were made.
//! Every update is kept until the agent says the framework acknowledged it (ACKNOWLEDGED); when the agent goes
//! away (it restarts) the driver subscribes again, with backoff, for up to `MESOS_RECOVERY_TIMEOUT`, listing
//! the tasks it has not reported on and the updates not yet acknowledged, so that nothing is lost or run twice.
//! After SHUTDOWN, or when the agent stays away, [`run_executor`] returns (the agent kills what is left of the
//! executor's process group after its grace period).
//!
//! ```no_run
//! use allot_sdk::executor::{Executor, ExecutorDriver, run_executor};
//! use allot_sdk::{TaskInfo, TaskState};
//! struct Echo;
//! impl Executor for Echo {
//!     fn launch_task(&mut self, driver: &ExecutorDriver, task: TaskInfo) {
//!         driver.send_status_update(&task.task_id, TaskState::TaskRunning, "");
//!         driver.send_status_update(&task.task_id, TaskState::TaskFinished, "done");
//!     }
//!     fn kill_task(&mut self, driver: &ExecutorDriver, task_id: &str) {
//!         driver.send_status_update(task_id, TaskState::TaskKilled, "killed");
//!     }
//! }
//! # async fn go() -> Result<(), allot_sdk::executor::ExecutorError> {
//! run_executor(Echo).await?;
//! # Ok(()) }
//! ```

use allot_mesos::executor::{Call, Event, Message, Subscribe, Update};
use allot_mesos::v1;
use allot_proto::common::{ExecutorInfo, TaskInfo, TaskState, TaskStatus};
use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// An executor's callbacks. Each runs on the driver's task: keep them quick (run tasks on threads or tasks of
/// your own) and report through the [`ExecutorDriver`], which queues.
pub trait Executor: Send {
    /// SUBSCRIBED: the agent took the executor (again, after a re-subscription).
    fn registered(&mut self, _driver: &ExecutorDriver, _registered: &Registered) {}
    /// LAUNCH: run `task` and report its states (TASK_RUNNING, then a terminal one).
    fn launch_task(&mut self, driver: &ExecutorDriver, task: TaskInfo);
    /// KILL: stop task `task_id` and report TASK_KILLED.
    fn kill_task(&mut self, driver: &ExecutorDriver, task_id: &str);
    /// MESSAGE: `data` from the framework's scheduler (best effort).
    fn framework_message(&mut self, _driver: &ExecutorDriver, _data: &[u8]) {}
    /// SHUTDOWN: end every task (reporting each) and exit; the agent kills the executor's process group after
    /// its grace period ([`ExecutorDriver::shutdown_grace_period`]).
    fn shutdown(&mut self, _driver: &ExecutorDriver) {}
    /// ERROR from the agent, or a call that failed.
    fn error(&mut self, _driver: &ExecutorDriver, _message: &str) {}
    /// The subscription dropped (the agent restarted?); the driver is subscribing again.
    fn disconnected(&mut self, _driver: &ExecutorDriver) {}
}

/// What SUBSCRIBED says.
#[derive(Debug, Clone, Default)]
pub struct Registered {
    /// The executor as its framework launched it (`data` included).
    pub executor: ExecutorInfo,
    /// The agent's ID.
    pub agent_id: String,
    /// The agent's hostname.
    pub agent_hostname: String,
    /// The framework's name.
    pub framework_name: String,
}

/// A failure that ends [`run_executor`].
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The program was not started by an agent as an executor: a `MESOS_*` variable is missing or invalid.
    #[error("not started as an executor: {0}")]
    Environment(String),
    /// The agent refused the subscription (unknown executor, bad token).
    #[error("subscription refused: {0}")]
    Refused(String),
    /// The agent stayed away longer than the recovery timeout.
    #[error("the agent did not come back within {0:?}")]
    AgentGone(Duration),
}

/// Where the agent is and who this executor is: from the environment the agent started it with.
#[derive(Debug, Clone)]
pub struct ExecutorEnv {
    /// `MESOS_AGENT_ENDPOINT`: `ip:port` of the agent's executor API.
    pub endpoint: String,
    /// `MESOS_FRAMEWORK_ID`.
    pub framework_id: String,
    /// `MESOS_EXECUTOR_ID`.
    pub executor_id: String,
    /// `MESOS_EXECUTOR_AUTHENTICATION_TOKEN` (empty: none sent).
    pub token: String,
    /// `MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD` (default 5 s).
    pub shutdown_grace: Duration,
    /// `MESOS_CHECKPOINT` is `1`: re-subscribe after the agent went away.
    pub checkpoint: bool,
    /// `MESOS_RECOVERY_TIMEOUT` (default 15 min): how long to try.
    pub recovery_timeout: Duration,
    /// `MESOS_SUBSCRIPTION_BACKOFF_MAX` (default 2 s).
    pub backoff_max: Duration,
}

/// A Mesos duration (`5secs`, `500ms`, `2mins`, `1.5hrs`, `100ns`, `3days`, `1weeks`).
pub fn parse_mesos_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "secs" | "" => n,
        "mins" => n * 60.0,
        "hrs" => n * 3600.0,
        "days" => n * 86400.0,
        "weeks" => n * 604800.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

impl ExecutorEnv {
    /// From this process's environment.
    ///
    /// # Errors
    /// [`ExecutorError::Environment`] naming a missing `MESOS_AGENT_ENDPOINT`, `MESOS_FRAMEWORK_ID` or
    /// `MESOS_EXECUTOR_ID`, or a duration that does not parse.
    pub fn from_env() -> Result<ExecutorEnv, ExecutorError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let need = |name: &str| {
            var(name).ok_or_else(|| ExecutorError::Environment(format!("{name} is not set")))
        };
        let duration = |name: &str, default: Duration| match var(name) {
            None => Ok(default),
            Some(v) => parse_mesos_duration(&v).ok_or_else(|| {
                ExecutorError::Environment(format!("{name}='{v}' is not a duration"))
            }),
        };
        Ok(ExecutorEnv {
            endpoint: need("MESOS_AGENT_ENDPOINT")?,
            framework_id: need("MESOS_FRAMEWORK_ID")?,
            executor_id: need("MESOS_EXECUTOR_ID")?,
            token: var("MESOS_EXECUTOR_AUTHENTICATION_TOKEN").unwrap_or_default(),
            shutdown_grace: duration(
                "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD",
                Duration::from_secs(5),
            )?,
            checkpoint: var("MESOS_CHECKPOINT").as_deref() == Some("1"),
            recovery_timeout: duration("MESOS_RECOVERY_TIMEOUT", Duration::from_secs(900))?,
            backoff_max: duration("MESOS_SUBSCRIPTION_BACKOFF_MAX", Duration::from_secs(2))?,
        })
    }
}

/// What the executor's callbacks ask the driver to send.
enum Out {
    Update(Box<v1::TaskStatus>),
    Message(Vec<u8>),
}

/// What the driver keeps until the agent confirms it: tasks given and not reported on, updates not
/// acknowledged.
#[derive(Default)]
struct Unacknowledged {
    tasks: BTreeMap<String, v1::TaskInfo>,
    /// By uuid, in the order sent.
    updates: Vec<v1::TaskStatus>,
}

/// The executor's handle on its agent. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct ExecutorDriver {
    out: mpsc::UnboundedSender<Out>,
    env: Arc<ExecutorEnv>,
    unacknowledged: Arc<Mutex<Unacknowledged>>,
    stop: CancellationToken,
}

impl ExecutorDriver {
    /// Reports `state` of task `task_id` with `message`.
    pub fn send_status_update(&self, task_id: &str, state: TaskState, message: &str) {
        self.send_status(TaskStatus {
            task_id: task_id.to_string(),
            state: state as i32,
            message: message.to_string(),
            ..Default::default()
        });
    }

    /// Reports `status` (its `task_id`, `state`, and optionally `message`, `reason`, `data`); the driver sets
    /// the uuid, source, executor and timestamp. Kept and re-sent until acknowledged.
    pub fn send_status(&self, status: TaskStatus) {
        let mut s = allot_mesos::convert::status_to_v1(&status);
        s.uuid = Some(v1::Bytes(uuid::Uuid::new_v4().as_bytes().to_vec()));
        s.source = Some("SOURCE_EXECUTOR".into());
        s.executor_id = Some(v1::Id::of(&self.env.executor_id));
        s.agent_id = None;
        s.timestamp = Some(allot_common::now_secs());
        {
            let mut u = self.unacknowledged.lock().expect("unacknowledged poisoned");
            u.tasks.remove(&status.task_id);
            u.updates.push(s.clone());
        }
        let _ = self.out.send(Out::Update(Box::new(s)));
    }

    /// MESSAGE: sends `data` to the framework's scheduler (its `framework_message`), best effort.
    pub fn send_framework_message(&self, data: Vec<u8>) {
        let _ = self.out.send(Out::Message(data));
    }

    /// Ends [`run_executor`] (after the queued calls are sent).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The framework's ID.
    pub fn framework_id(&self) -> &str {
        &self.env.framework_id
    }

    /// This executor's ID.
    pub fn executor_id(&self) -> &str {
        &self.env.executor_id
    }

    /// The time the agent gives the executor between SHUTDOWN and SIGKILL.
    pub fn shutdown_grace_period(&self) -> Duration {
        self.env.shutdown_grace
    }
}

/// POSTs `call` to the agent's executor API; returns the response (the caller reads the body).
async fn post(
    env: &ExecutorEnv,
    call: &Call,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let stream = tokio::net::TcpStream::connect(&env.endpoint)
        .await
        .map_err(|e| format!("cannot reach the agent at {}: {e}", env.endpoint))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let body = serde_json::to_vec(call).map_err(|e| e.to_string())?;
    let mut req = hyper::Request::post("/api/v1/executor")
        .header(hyper::header::HOST, &env.endpoint)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json");
    if !env.token.is_empty() {
        req = req.header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", env.token),
        );
    }
    let req = req
        .body(http_body_util::Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}

/// The status and text of a refused call's response.
async fn refusal(r: hyper::Response<hyper::body::Incoming>) -> (hyper::StatusCode, String) {
    let code = r.status();
    let body = r.into_body().collect().await.map(|b| b.to_bytes());
    let text = body
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    (code, text)
}

/// A call of this executor with `kind` and nothing else yet.
fn call(env: &ExecutorEnv, kind: &str) -> Call {
    Call {
        executor_id: Some(v1::Id::of(&env.executor_id)),
        framework_id: Some(v1::Id::of(&env.framework_id)),
        kind: Some(kind.into()),
        ..Default::default()
    }
}

/// Sends the queued calls in order, one at a time. A call that fails is reported through `errors`; an update
/// that could not be sent stays unacknowledged and goes again with the next SUBSCRIBE.
async fn send_calls(
    env: Arc<ExecutorEnv>,
    mut out: mpsc::UnboundedReceiver<Out>,
    errors: mpsc::UnboundedSender<String>,
) {
    while let Some(o) = out.recv().await {
        let (c, what) = match o {
            Out::Update(status) => {
                let mut c = call(&env, "UPDATE");
                c.update = Some(Update { status: *status });
                (c, "UPDATE")
            }
            Out::Message(data) => {
                let mut c = call(&env, "MESSAGE");
                c.message = Some(Message {
                    data: v1::Bytes(data),
                });
                (c, "MESSAGE")
            }
        };
        match post(&env, &c).await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                let (code, text) = refusal(r).await;
                let _ = errors.send(format!("{what} refused ({code}): {text}"));
            }
            Err(e) => {
                let _ = errors.send(format!("{what} failed: {e}"));
            }
        }
    }
}

/// Runs `executor` against the agent named by this process's environment until SHUTDOWN, [`ExecutorDriver::stop`]
/// or the agent stays away; returns the executor.
///
/// # Errors
/// [`ExecutorError::Environment`] when the program was not started as an executor;
/// [`ExecutorError::Refused`] when the agent refuses the subscription; [`ExecutorError::AgentGone`] when it
/// does not come back within the recovery timeout (without checkpointing: at once).
pub async fn run_executor<E: Executor>(executor: E) -> Result<E, ExecutorError> {
    run_executor_with(ExecutorEnv::from_env()?, executor).await
}

/// [`run_executor`] with an explicit environment.
///
/// # Errors
/// As [`run_executor`].
pub async fn run_executor_with<E: Executor>(
    env: ExecutorEnv,
    mut executor: E,
) -> Result<E, ExecutorError> {
    let env = Arc::new(env);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (err_tx, mut err_rx) = mpsc::unbounded_channel();
    let driver = ExecutorDriver {
        out: out_tx,
        env: env.clone(),
        unacknowledged: Arc::default(),
        stop: CancellationToken::new(),
    };
    let sender = tokio::spawn(send_calls(env.clone(), out_rx, err_tx));
    let mut away_since: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    let result = 'outer: loop {
        if let Some(since) = away_since
            && (!env.checkpoint || since.elapsed() > env.recovery_timeout)
        {
            break Err(ExecutorError::AgentGone(env.recovery_timeout));
        }
        let mut c = call(&env, "SUBSCRIBE");
        {
            let u = driver
                .unacknowledged
                .lock()
                .expect("unacknowledged poisoned");
            c.subscribe = Some(Subscribe {
                unacknowledged_tasks: u.tasks.values().cloned().collect(),
                unacknowledged_updates: u
                    .updates
                    .iter()
                    .map(|s| Update { status: s.clone() })
                    .collect(),
            });
        }
        let response = tokio::select! {
            r = post(&env, &c) => r,
            _ = driver.stop.cancelled() => break Ok(()),
        };
        let response = match response {
            Ok(r) if r.status() == hyper::StatusCode::OK => r,
            Ok(r) if r.status() == hyper::StatusCode::SERVICE_UNAVAILABLE => {
                tokio::time::sleep(backoff).await;
                continue;
            }
            Ok(r) => {
                let (code, text) = refusal(r).await;
                // Another agent process on the same endpoint may not have recovered this executor yet.
                if away_since.is_some() && code == hyper::StatusCode::BAD_REQUEST {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(env.backoff_max);
                    continue;
                }
                break Err(ExecutorError::Refused(format!("{code}: {text}")));
            }
            Err(e) => {
                away_since.get_or_insert_with(Instant::now);
                tracing::debug!(error = %e, "cannot subscribe; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(env.backoff_max);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut body = response.into_body();
        let mut decoder = allot_mesos::recordio::Decoder::default();
        'stream: loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                Some(e) = err_rx.recv() => { executor.error(&driver, &e); continue; }
                _ = driver.stop.cancelled() => break 'outer Ok(()),
            };
            let data = match frame {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "the subscription broke");
                    break;
                }
                None => break,
            };
            decoder.push(&data);
            loop {
                let record = match decoder.next_record() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        // Nothing after a broken frame can be trusted: subscribe again.
                        executor.error(&driver, &e.to_string());
                        break 'stream;
                    }
                };
                let ev: Event = match serde_json::from_slice(&record) {
                    Ok(ev) => ev,
                    Err(e) => {
                        executor.error(&driver, &format!("an event that does not parse: {e}"));
                        continue;
                    }
                };
                if dispatch(&mut executor, &driver, ev) {
                    break 'outer Ok(());
                }
            }
        }
        away_since = Some(Instant::now());
        executor.disconnected(&driver);
    };
    // Let the queued calls (final updates) go out.
    drop(driver);
    let _ = tokio::time::timeout(Duration::from_secs(5), sender).await;
    result.map(|()| executor)
}

/// Hands `ev` to `executor`; `true` after SHUTDOWN.
fn dispatch<E: Executor>(executor: &mut E, driver: &ExecutorDriver, ev: Event) -> bool {
    match ev.kind.as_str() {
        "SUBSCRIBED" => {
            let s = ev.subscribed.unwrap_or_default();
            let registered = Registered {
                executor: allot_mesos::convert::executor_from_v1(&s.executor_info)
                    .unwrap_or_default(),
                agent_id: s.agent_info.id.map(|i| i.value).unwrap_or_default(),
                agent_hostname: s.agent_info.hostname,
                framework_name: s.framework_info.name,
            };
            executor.registered(driver, &registered);
        }
        "LAUNCH" => {
            let task = ev.launch.unwrap_or_default().task;
            match allot_mesos::convert::task_from_v1(&task) {
                Ok(t) => {
                    driver
                        .unacknowledged
                        .lock()
                        .expect("unacknowledged poisoned")
                        .tasks
                        .insert(t.task_id.clone(), task);
                    executor.launch_task(driver, t);
                }
                Err(e) => executor.error(driver, &format!("a LAUNCH that does not convert: {e}")),
            }
        }
        "KILL" => {
            let id = ev.kill.unwrap_or_default().task_id.value;
            executor.kill_task(driver, &id);
        }
        "ACKNOWLEDGED" => {
            let a = ev.acknowledged.unwrap_or_default();
            driver
                .unacknowledged
                .lock()
                .expect("unacknowledged poisoned")
                .updates
                .retain(|s| s.uuid.as_ref() != Some(&a.uuid));
        }
        "MESSAGE" => executor.framework_message(driver, &ev.message.unwrap_or_default().data.0),
        "ERROR" => executor.error(driver, &ev.error.unwrap_or_default().message),
        "SHUTDOWN" => {
            executor.shutdown(driver);
            return true;
        }
        _ => {}
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesos_durations_parse() {
        assert_eq!(parse_mesos_duration("5secs"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_mesos_duration("2.5secs"),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            parse_mesos_duration("15mins"),
            Some(Duration::from_secs(900))
        );
        assert_eq!(
            parse_mesos_duration("100ms"),
            Some(Duration::from_millis(100))
        );
        assert_eq!(parse_mesos_duration("5 parsecs"), None);
    }
}
