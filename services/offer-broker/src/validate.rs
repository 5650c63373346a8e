//! Validation of LAUNCH operations against the offers they use. Pure: no I/O.

use crate::error::Error;
use allot_common::convert::resources_from_proto;
use allot_proto::common::TaskInfo;
use allot_resources::Resources;
use std::collections::HashSet;

pub use allot_common::valid_id;

/// A task that passed validation, with its parsed resources.
#[derive(Debug, Clone)]
pub struct ValidTask {
    /// The task, with `agent_id` and `name` filled in.
    pub info: TaskInfo,
    /// Its resources.
    pub resources: Resources,
}

/// Checks the ExecutorInfo of task `task_id` and returns the executor's own resources.
///
/// # Errors
/// [`Error::Invalid`]: an invalid executor ID, no command, a negative or non-finite shutdown grace period,
/// invalid resources.
fn check_executor(
    task_id: &str,
    e: &allot_proto::common::ExecutorInfo,
) -> Result<Resources, Error> {
    let bad = |why: String| Error::Invalid(format!("task '{task_id}': executor {why}"));
    if !valid_id(&e.executor_id) {
        return Err(bad(format!(
            "ID '{}' must be 1-128 characters of [A-Za-z0-9._-]",
            e.executor_id
        )));
    }
    if e.command.as_ref().is_none_or(|c| c.value.trim().is_empty()) {
        return Err(bad(format!(
            "'{}' has no command (CommandInfo.value is empty)",
            e.executor_id
        )));
    }
    if !(e.shutdown_grace_period.is_finite() && e.shutdown_grace_period >= 0.0) {
        return Err(bad(
            "shutdown_grace_period must be a finite number of seconds >= 0".into(),
        ));
    }
    resources_from_proto(&e.resources).map_err(|err| bad(format!("resources: {err}")))
}

/// Checks `tasks` launched on `agent_id` from offers totalling `offered`.
///
/// `is_live(task_id)` tells whether the framework already has a non-terminal task with that ID.
///
/// # Errors
/// [`Error::Invalid`] naming the first problem: a bad or duplicate task ID, a task for another agent, a task
/// with neither or both of a command and an executor, an invalid executor, invalid or empty resources, or tasks
/// that together ask for more than the offers hold.
///
/// A task run by an executor of the framework's own is charged the executor's resources too (they join the
/// task's, in the returned `resources` and in the task as recorded): Allot charges them with every task
/// launched on the executor, where Mesos charges them once per running executor, so a framework never
/// overcommits an agent by launching onto an executor (and an executor's resources are best kept small).
pub fn validate_launch(
    agent_id: &str,
    offered: &Resources,
    tasks: Vec<TaskInfo>,
    is_live: impl Fn(&str) -> bool,
) -> Result<Vec<ValidTask>, Error> {
    let mut seen = HashSet::new();
    let mut sum = Resources::new();
    let mut out = Vec::with_capacity(tasks.len());
    for mut t in tasks {
        if !valid_id(&t.task_id) {
            return Err(Error::Invalid(format!(
                "task_id '{}' must be 1-128 characters of [A-Za-z0-9._-]",
                t.task_id
            )));
        }
        if !seen.insert(t.task_id.clone()) || is_live(&t.task_id) {
            return Err(Error::Invalid(format!(
                "task_id '{}' is already in use by a live task of this framework",
                t.task_id
            )));
        }
        if t.agent_id.is_empty() {
            t.agent_id = agent_id.to_string();
        } else if t.agent_id != agent_id {
            return Err(Error::Invalid(format!(
                "task '{}' names agent {} but the offers are for agent {agent_id}",
                t.task_id, t.agent_id
            )));
        }
        let mut res = resources_from_proto(&t.resources)
            .map_err(|e| Error::Invalid(format!("task '{}': {e}", t.task_id)))?;
        match (&t.command, &t.executor) {
            (Some(_), Some(_)) => {
                return Err(Error::Invalid(format!(
                    "task '{}' sets both a command and an executor; set one",
                    t.task_id
                )));
            }
            (Some(c), None) if !c.value.trim().is_empty() => {}
            (None, Some(e)) => res.add(&check_executor(&t.task_id, e)?),
            _ => {
                return Err(Error::Invalid(format!(
                    "task '{}' has no command (CommandInfo.value is empty) and no executor",
                    t.task_id
                )));
            }
        }
        if !(t.kill_grace_period.is_finite() && t.kill_grace_period >= 0.0) {
            return Err(Error::Invalid(format!(
                "task '{}': kill_grace_period must be a finite number of seconds >= 0",
                t.task_id
            )));
        }
        if res.scalar("cpus") <= 0.0 && res.scalar("mem") <= 0.0 {
            return Err(Error::Invalid(format!(
                "task '{}' must ask for some cpus or mem",
                t.task_id
            )));
        }
        if t.name.is_empty() {
            t.name = t.task_id.clone();
        }
        sum.add(&res);
        out.push(ValidTask {
            info: t,
            resources: res,
        });
    }
    if !offered.contains(&sum) {
        return Err(Error::Invalid(format!(
            "the tasks ask for {sum}, which overcommits the offered {offered}"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use allot_common::convert::resources_to_proto;
    use allot_proto::common::CommandInfo;

    fn task(id: &str, res: &str) -> TaskInfo {
        TaskInfo {
            task_id: id.into(),
            resources: resources_to_proto(&res.parse().unwrap()),
            command: Some(CommandInfo {
                value: "true".into(),
                shell: true,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn offered() -> Resources {
        "cpus:2;mem:256".parse().unwrap()
    }

    #[test]
    fn fills_in_agent_and_name() {
        let v = validate_launch("a1", &offered(), vec![task("t1", "cpus:1;mem:128")], |_| {
            false
        })
        .unwrap();
        assert_eq!(v[0].info.agent_id, "a1");
        assert_eq!(v[0].info.name, "t1");
    }

    #[test]
    fn refuses_overcommit_across_tasks() {
        let e = tonic::Status::from(
            validate_launch(
                "a1",
                &offered(),
                vec![task("t1", "cpus:1.5"), task("t2", "cpus:1")],
                |_| false,
            )
            .unwrap_err(),
        );
        assert!(e.message().contains("overcommits"), "{}", e.message());
    }

    #[test]
    fn refuses_bad_tasks() {
        let mut other = task("t1", "cpus:1");
        other.agent_id = "a2".into();
        let mut nocmd = task("t1", "cpus:1");
        nocmd.command = None;
        let cases = [
            (vec![task("", "cpus:1")], "task_id"),
            (vec![task("t/1", "cpus:1")], "task_id"),
            (
                vec![task("t1", "cpus:1"), task("t1", "cpus:0.5")],
                "already in use",
            ),
            (vec![other], "names agent"),
            (vec![nocmd], "no command"),
            (vec![task("t1", "disk:1")], "cpus or mem"),
        ];
        for (tasks, want) in cases {
            let e = tonic::Status::from(
                validate_launch("a1", &offered(), tasks, |_| false).unwrap_err(),
            );
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(want), "{} lacks {want}", e.message());
        }
        let mut nan = task("t1", "cpus:1");
        nan.resources[0].scalar = f64::NAN;
        assert!(validate_launch("a1", &offered(), vec![nan], |_| false).is_err());
        let e = tonic::Status::from(
            validate_launch("a1", &offered(), vec![task("t1", "cpus:1")], |id| {
                id == "t1"
            })
            .unwrap_err(),
        );
        assert!(e.message().contains("already in use"));
    }

    #[test]
    fn an_executor_task_is_charged_its_executor_and_must_name_one_runner() {
        let executor = |id: &str, cmd: &str| allot_proto::common::ExecutorInfo {
            executor_id: id.into(),
            command: Some(CommandInfo {
                value: cmd.into(),
                shell: true,
                ..Default::default()
            }),
            resources: resources_to_proto(&"cpus:0.5;mem:32".parse().unwrap()),
            ..Default::default()
        };
        let mut t = task("t1", "cpus:1;mem:128");
        t.command = None;
        t.executor = Some(executor("e1", "./worker"));
        let v = validate_launch("a1", &offered(), vec![t.clone()], |_| false).unwrap();
        assert_eq!(v[0].resources, "cpus:1.5;mem:160".parse().unwrap());
        let mut big = t.clone();
        big.resources = resources_to_proto(&"cpus:1.75".parse().unwrap());
        let e = tonic::Status::from(
            validate_launch("a1", &offered(), vec![big], |_| false).unwrap_err(),
        );
        assert!(e.message().contains("overcommits"), "{}", e.message());
        let mut both = t.clone();
        both.command = task("x", "cpus:1").command;
        let mut bad_id = t.clone();
        bad_id.executor = Some(executor("e/1", "./w"));
        let mut no_cmd = t.clone();
        no_cmd.executor = Some(executor("e1", " "));
        for (task, want) in [
            (both, "both"),
            (bad_id, "executor ID"),
            (no_cmd, "no command"),
        ] {
            let e = tonic::Status::from(
                validate_launch("a1", &offered(), vec![task], |_| false).unwrap_err(),
            );
            assert!(e.message().contains(want), "{} lacks {want}", e.message());
        }
    }
}
