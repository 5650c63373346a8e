//! Packing pending tasks into offers (one offer, or a whole OFFERS event), shared by `allot execute` and `allot
//! batch`.

use allot_resources::Resources;
use allot_sdk::{Offer, TaskInfo};
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

/// What a framework holding at most a given number of tasks at once does with one OFFERS event: the offers it
/// launches on, and the rest, to be declined together (one DECLINE call for each list, however many agents
/// the event offers: after a REVIVE every agent with room is offered, and a call per offer costs the
/// framework, the broker and the allocator a call per agent).
#[derive(Debug)]
pub struct OfferPlan<T> {
    /// Each offer used, in the event's order, with the queue items launched on it (at least one).
    pub launches: Vec<(Offer, Vec<T>)>,
    /// IDs of offers left over once `room` tasks were placed: the framework is at its cap, and declines them
    /// with a filter (it revives when a task ends).
    pub at_cap: Vec<String>,
    /// IDs of offers declined with room to spare: too small for the next queued item, or nothing queued.
    /// Declined without a filter, so that the agent comes back when more is free there.
    pub too_small: Vec<String>,
}

/// Plans one OFFERS event: in the event's order, each offer takes queue items from the front while they fit
/// it (see [`take_fitting`]) and fewer than `room` have been taken in all; an offer that takes none goes to
/// [`OfferPlan::at_cap`] if `room` is used up, else to [`OfferPlan::too_small`]. Offers whose resources do not
/// parse count as empty. Items taken are removed from `queue`.
pub fn plan_offers<T>(
    offers: Vec<Offer>,
    queue: &mut VecDeque<T>,
    mut room: usize,
    resources: impl Fn(&T) -> &Resources,
) -> OfferPlan<T> {
    let mut plan = OfferPlan {
        launches: Vec::new(),
        at_cap: Vec::new(),
        too_small: Vec::new(),
    };
    for offer in offers {
        let offered =
            allot_common::convert::resources_from_proto(&offer.resources).unwrap_or_default();
        let taken = take_fitting(&offered, queue, room, &resources);
        if taken.is_empty() {
            if room == 0 {
                plan.at_cap.push(offer.offer_id);
            } else {
                plan.too_small.push(offer.offer_id);
            }
        } else {
            room -= taken.len();
            plan.launches.push((offer, taken));
        }
    }
    plan
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

    fn offer(id: &str, r: &str) -> Offer {
        let amount: Resources = r.parse().unwrap();
        Offer {
            offer_id: id.into(),
            agent_id: format!("agent-{id}"),
            resources: allot_common::convert::resources_to_proto(&amount),
            ..Default::default()
        }
    }

    #[test]
    fn one_event_launches_up_to_the_room_and_sorts_the_rest_into_two_declines() {
        // Five offers after a REVIVE, room for three tasks of cpus:1: two on the first offer, one on the
        // second, and the other three left for one DECLINE with a filter.
        let mut q: VecDeque<_> = (0..6).map(|i| p(&format!("t{i}"), "cpus:1")).collect();
        let offers = vec![
            offer("o1", "cpus:2"),
            offer("o2", "cpus:4"),
            offer("o3", "cpus:4"),
            offer("o4", "cpus:4"),
            offer("o5", "cpus:4"),
        ];
        let plan = plan_offers(offers, &mut q, 3, |p| &p.resources);
        let used: Vec<(&str, usize)> = plan
            .launches
            .iter()
            .map(|(o, t)| (o.offer_id.as_str(), t.len()))
            .collect();
        assert_eq!(used, [("o1", 2), ("o2", 1)]);
        assert_eq!(plan.at_cap, ["o3", "o4", "o5"]);
        assert!(plan.too_small.is_empty());
        assert_eq!(q.len(), 3, "three tasks still queued");

        // With room left, an offer too small for the next task is declined without a filter, and a later
        // offer that fits is still used.
        let plan = plan_offers(
            vec![offer("o6", "cpus:0.5"), offer("o7", "cpus:1")],
            &mut q,
            2,
            |p| &p.resources,
        );
        assert_eq!(plan.too_small, ["o6"]);
        assert!(plan.at_cap.is_empty());
        assert_eq!(plan.launches.len(), 1);
        assert_eq!(plan.launches[0].0.offer_id, "o7");

        // Nothing queued: every offer is declined without a filter (the batch suppresses then).
        let mut empty: VecDeque<Pending> = VecDeque::new();
        let plan = plan_offers(vec![offer("o8", "cpus:1")], &mut empty, 5, |p| &p.resources);
        assert_eq!(plan.too_small, ["o8"]);
    }
}
