//! Conversions between protocol resources (`allot.common.v1.Resource`) and [`Resources`], with reservation roles.

use allot_proto::common::{Range, Resource};
use allot_resources::{Limits, Resources, ResourcesError};
use std::collections::BTreeMap;

/// Converts protocol resources into one validated [`Resources`], reserved and unreserved together. Resources
/// with the same name add up.
///
/// # Errors
/// [`ResourcesError`] for a missing name, a negative, NaN, infinite or too large scalar, or an empty range.
pub fn resources_from_proto(list: &[Resource]) -> Result<Resources, ResourcesError> {
    let (mut all, reserved) = pieces_from_proto(list)?;
    for r in reserved.values() {
        all.add(r);
    }
    Ok(all)
}

/// Converts a role's protocol quota limit (`Role.quota_limit`) into [`Limits`]: a resource given with scalar 0
/// is kept and allows none of it; resources the list does not name are not limited. Entries of the same name:
/// the last one counts.
///
/// # Errors
/// [`ResourcesError`] for a missing name, a range (limits are scalars only), or a negative, NaN, infinite or
/// too large scalar.
pub fn limits_from_proto(list: &[Resource]) -> Result<Limits, ResourcesError> {
    let mut limits = Limits::new();
    for res in list {
        if !res.ranges.is_empty() {
            return Err(ResourcesError::Parse(format!(
                "{}: a quota limit names scalars only",
                res.name
            )));
        }
        limits.set(&res.name, res.scalar)?;
    }
    Ok(limits)
}

/// A role's quota limit as protocol resources, zeros included (the way back of [`limits_from_proto`]).
pub fn limits_to_proto(limits: &Limits) -> Vec<Resource> {
    limits.scalars().map(scalar_to_proto).collect()
}

/// One scalar, `(name, thousandths)`, as a protocol resource.
fn scalar_to_proto((name, milli): (&str, i64)) -> Resource {
    Resource {
        name: name.to_string(),
        scalar: milli as f64 / allot_resources::SCALE as f64,
        ..Default::default()
    }
}

/// Converts protocol resources into the unreserved ones and the reserved ones by role (`role` empty or `*` is
/// unreserved).
///
/// # Errors
/// As [`resources_from_proto`].
pub fn pieces_from_proto(
    list: &[Resource],
) -> Result<(Resources, BTreeMap<String, Resources>), ResourcesError> {
    let mut unreserved = Resources::new();
    let mut reserved: BTreeMap<String, Resources> = BTreeMap::new();
    for res in list {
        if res.name.is_empty() {
            return Err(ResourcesError::NoName);
        }
        let r = if res.role.is_empty() || res.role == "*" {
            &mut unreserved
        } else {
            reserved.entry(res.role.clone()).or_default()
        };
        if res.ranges.is_empty() {
            r.add_scalar(&res.name, res.scalar)?;
        } else {
            for range in &res.ranges {
                r.add_range(&res.name, range.begin, range.end)?;
            }
        }
    }
    Ok((unreserved, reserved))
}

/// Protocol resources for `unreserved` plus `reserved` tagged with `role`.
pub fn piece_to_proto(unreserved: &Resources, reserved: &Resources, role: &str) -> Vec<Resource> {
    let mut out = resources_to_proto(unreserved);
    out.extend(resources_to_proto(reserved).into_iter().map(|mut r| {
        r.role = role.to_string();
        r
    }));
    out
}

/// Splits `want` into the part taken from `pool` (scalars up to what the pool has, ranges the pool contains)
/// and the rest; the taken part is removed from `pool`. Returns `(rest, taken)`.
pub fn take_from(want: &Resources, pool: &mut Resources) -> (Resources, Resources) {
    let mut taken = Resources::new();
    for (name, milli) in want.scalars() {
        taken.set_scalar_milli(name, milli.min(pool.scalar_milli(name)));
    }
    for (name, set) in want.ranges() {
        for &(b, e) in set {
            let mut one = Resources::new();
            if one.add_range(name, b, e).is_ok() && pool.contains(&one) {
                taken.add(&one);
            }
        }
    }
    pool.subtract(&taken);
    (want.minus(&taken), taken)
}

/// Converts [`Resources`] into protocol resources: one `Resource` per name, scalars first.
pub fn resources_to_proto(r: &Resources) -> Vec<Resource> {
    let mut out: Vec<Resource> = r.scalars().map(scalar_to_proto).collect();
    out.extend(r.ranges().map(|(name, set)| {
        Resource {
            name: name.to_string(),
            ranges: set
                .iter()
                .map(|&(begin, end)| Range { begin, end })
                .collect(),
            ..Default::default()
        }
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_validation() {
        let r: Resources = "cpus:1.5;mem:100;ports:[10-20]".parse().unwrap();
        assert_eq!(resources_from_proto(&resources_to_proto(&r)).unwrap(), r);
        let bad = Resource {
            name: "cpus".into(),
            scalar: f64::NAN,
            ..Default::default()
        };
        assert!(resources_from_proto(&[bad]).is_err());
        let neg = Resource {
            name: "mem".into(),
            scalar: -5.0,
            ..Default::default()
        };
        assert!(resources_from_proto(&[neg]).is_err());
    }

    #[test]
    fn pieces_keep_their_role_and_take_from_splits() {
        let u: Resources = "cpus:1".parse().unwrap();
        let r: Resources = "cpus:2;mem:64".parse().unwrap();
        let (pu, pr) = pieces_from_proto(&piece_to_proto(&u, &r, "db")).unwrap();
        assert_eq!((pu, &pr["db"]), (u, &r));
        let mut pool = r.clone();
        let (rest, taken) = take_from(&"cpus:2.5;mem:32".parse().unwrap(), &mut pool);
        assert_eq!(taken, "cpus:2;mem:32".parse().unwrap());
        assert_eq!(rest, "cpus:0.5".parse().unwrap());
        assert_eq!(pool, "mem:32".parse().unwrap());
    }
}
