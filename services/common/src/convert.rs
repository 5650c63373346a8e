//! Conversions between protocol resources (`allot.common.v1.Resource`) and [`Resources`].

use allot_policy::{Resources, ResourcesError};
use allot_proto::common::{Range, Resource};

/// Converts protocol resources into a validated [`Resources`]. Resources with the same name add up.
///
/// # Errors
/// [`ResourcesError`] for a missing name, a negative, NaN, infinite or too large scalar, or an empty range.
/// Reserved resources (a non-empty `role` other than `*`) are not supported yet and are refused.
pub fn resources_from_proto(list: &[Resource]) -> Result<Resources, ResourcesError> {
    let mut r = Resources::new();
    for res in list {
        if res.name.is_empty() {
            return Err(ResourcesError::NoName);
        }
        if !res.role.is_empty() && res.role != "*" {
            return Err(ResourcesError::Parse(format!(
                "{}: reserved resources (role '{}') are not supported yet",
                res.name, res.role
            )));
        }
        if res.ranges.is_empty() {
            r.add_scalar(&res.name, res.scalar)?;
        } else {
            for range in &res.ranges {
                r.add_range(&res.name, range.begin, range.end)?;
            }
        }
    }
    Ok(r)
}

/// Converts [`Resources`] into protocol resources: one `Resource` per name, scalars first.
pub fn resources_to_proto(r: &Resources) -> Vec<Resource> {
    let mut out: Vec<Resource> = r
        .scalars()
        .map(|(name, milli)| Resource {
            name: name.to_string(),
            scalar: milli as f64 / allot_policy::resources::SCALE as f64,
            ..Default::default()
        })
        .collect();
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
}
