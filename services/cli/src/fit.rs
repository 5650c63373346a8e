//! Packing pending tasks into an offer, shared by `allot execute` and `allot batch`.

use allot_resources::Resources;
use allot_sdk::TaskInfo;
use std::collections::VecDeque;

/// A task waiting for resources.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The task (without an agent).
    pub info: TaskInfo,
    /// Its resources.
    pub resources: Resources,
}

/// Takes items from the front of `queue`, in order, while their resources (as `resources` gives them) fit in
/// `offered` and fewer than `max` are taken. Stops at the first item that does not fit, so tasks start in
/// queue order.
pub fn take_fitting<T>(
    offered: &Resources,
    queue: &mut VecDeque<T>,
    max: usize,
    resources: impl Fn(&T) -> &Resources,
) -> Vec<T> {
    let mut left = offered.clone();
    let mut out = Vec::new();
    while out.len() < max {
        match queue.front() {
            Some(p) if left.contains(resources(p)) => {
                left.subtract(resources(p));
                out.push(queue.pop_front().expect("front exists"));
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, r: &str) -> Pending {
        Pending {
            info: TaskInfo {
                task_id: id.into(),
                ..Default::default()
            },
            resources: r.parse().unwrap(),
        }
    }

    #[test]
    fn packs_in_order_up_to_the_cap() {
        let mut q: VecDeque<_> = vec![p("a", "cpus:1"), p("b", "cpus:1"), p("c", "cpus:1")].into();
        let got = take_fitting(&"cpus:2.5".parse().unwrap(), &mut q, 10, |p| &p.resources);
        assert_eq!(got.len(), 2);
        assert_eq!(q.len(), 1);
        let got = take_fitting(&"cpus:8".parse().unwrap(), &mut q, 0, |p| &p.resources);
        assert!(got.is_empty());
    }
}
