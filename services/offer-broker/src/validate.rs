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

/// Checks `tasks` launched on `agent_id` from offers totalling `offered`.
///
/// `is_live(task_id)` tells whether the framework already has a non-terminal task with that ID.
///
/// # Errors
/// [`Error::Invalid`] naming the first problem: a bad or duplicate task ID, a task for another agent, a task
/// with no command, invalid or empty resources, or tasks that together ask for more than the offers hold.
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
        match &t.command {
            Some(c) if !c.value.trim().is_empty() => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "task '{}' has no command (CommandInfo.value is empty)",
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
        let res = resources_from_proto(&t.resources)
            .map_err(|e| Error::Invalid(format!("task '{}': {e}", t.task_id)))?;
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
}
