//! Quota limits: the most of each scalar a role may hold, where zero is kept and means none.

use crate::{Kind, Resources, ResourcesError, SCALE, intern, text_parts, to_milli};
use smallvec::SmallVec;
use std::fmt;
use std::str::FromStr;

/// A quota limit: the most of each named scalar (cores, MiB, ...) a role may hold, offered and used together.
///
/// Unlike [`Resources`], which drops zero entries, a limit keeps them: `cpus:0` means the role may hold no
/// CPUs at all. A scalar the limit does not name is not limited, so an empty `Limits` limits nothing. This is
/// Mesos' reading of quota limits (`QuotaConfig.limits`, Mesos `docs/quota.md`): an absent resource is
/// unlimited, a zero one is none. Limits name scalars only; the text form refuses ranges.
///
/// Amounts are in thousandths, as in [`Resources`]; the text form is Mesos' resource string,
/// `cpus:0;mem:1024`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Sorted by name, every value >= 0.
    scalars: SmallVec<[(&'static str, i64); 4]>,
}

impl Limits {
    /// A limit that limits nothing.
    pub fn new() -> Limits {
        Limits::default()
    }

    /// Sets the limit of scalar `name` to `value` units (0 is kept: none of it).
    ///
    /// # Errors
    /// As [`Resources::add_scalar`]: NaN, infinite, negative, above [`crate::MAX_SCALAR`], an empty name or one
    /// name too many.
    pub fn set(&mut self, name: &str, value: f64) -> Result<(), ResourcesError> {
        let milli = to_milli(name, value)?;
        let k =
            intern(name, true).ok_or_else(|| ResourcesError::TooManyKinds { name: name.into() })?;
        self.set_milli(k, milli);
        Ok(())
    }

    /// Sets the limit of the interned kind `kind` in thousandths; a negative amount removes the limit on it
    /// (the `-1` of the index forms).
    pub fn set_kind_milli(&mut self, kind: Kind, milli: i64) {
        if milli < 0 {
            self.scalars.retain(|(k, _)| !std::ptr::eq(*k, kind.name()));
        } else {
            self.set_milli(kind.name(), milli);
        }
    }

    fn set_milli(&mut self, k: &'static str, milli: i64) {
        match self.scalars.binary_search_by(|(n, _)| (*n).cmp(k)) {
            Ok(i) => self.scalars[i].1 = milli,
            Err(i) => self.scalars.insert(i, (k, milli)),
        }
    }

    /// The limit on scalar `name` in thousandths; `None` when it is not limited.
    pub fn get_milli(&self, name: &str) -> Option<i64> {
        self.scalars
            .iter()
            .find(|(k, _)| *k == name)
            .map(|&(_, v)| v)
    }

    /// Every limited scalar as `(name, thousandths)`, sorted by name; zeros included.
    pub fn scalars(&self) -> impl Iterator<Item = (&str, i64)> {
        self.scalars.iter().map(|&(k, v)| (k, v))
    }

    /// Whether the limit names no scalar (and so limits nothing).
    pub fn is_empty(&self) -> bool {
        self.scalars.is_empty()
    }

    /// Whether a role holding `held` is within the limit.
    pub fn allows(&self, held: &Resources) -> bool {
        self.allows_sum(&[held])
    }

    /// Whether a role holding the sum of `parts` is within the limit (as [`Limits::allows`] on the sum,
    /// without building it).
    pub fn allows_sum(&self, parts: &[&Resources]) -> bool {
        self.scalars
            .iter()
            .all(|&(k, cap)| parts.iter().map(|p| p.scalar_milli(k)).sum::<i64>() <= cap)
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(k, v)) in self.scalars.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{k}:{}", v as f64 / SCALE as f64)?;
        }
        Ok(())
    }
}

impl FromStr for Limits {
    type Err = ResourcesError;

    /// Parses `cpus:0;mem:1024` (Mesos' resource string, scalars only). A name given twice keeps the last
    /// value.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut l = Limits::new();
        for part in text_parts(s) {
            let (name, value) = part?;
            if name.contains('[') || value.starts_with('[') {
                return Err(ResourcesError::Parse(s.into()));
            }
            let v: f64 = value.parse().map_err(|_| ResourcesError::Parse(s.into()))?;
            l.set(name, v)?;
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Resources {
        s.parse().unwrap()
    }

    #[test]
    fn zero_is_kept_and_absent_is_unlimited() {
        let l: Limits = "cpus:0;mem:0".parse().unwrap();
        assert!(!l.is_empty());
        assert_eq!(l.get_milli("cpus"), Some(0));
        assert_eq!(l.get_milli("disk"), None);
        assert!(!l.allows(&r("cpus:0.001")));
        assert!(l.allows(&r("disk:100")));
        assert_eq!(l.to_string(), "cpus:0;mem:0");
        assert!("".parse::<Limits>().unwrap().is_empty());
    }

    #[test]
    fn a_role_at_its_limit_is_allowed() {
        let l: Limits = "cpus:2".parse().unwrap();
        assert!(l.allows(&r("cpus:2;mem:99999")));
    }

    #[test]
    fn ranges_and_bad_values_are_refused() {
        assert!("ports:[1-2]".parse::<Limits>().is_err());
        assert!("cpus:-1".parse::<Limits>().is_err());
        assert!("cpus(db):1".parse::<Limits>().is_err());
        assert!("cpus".parse::<Limits>().is_err());
    }

    #[test]
    fn index_form_minus_one_removes_a_limit() {
        let mut l: Limits = "cpus:1;mem:0".parse().unwrap();
        l.set_kind_milli(Kind::new("cpus"), -1);
        l.set_kind_milli(Kind::new("disk"), 0);
        assert_eq!(l.to_string(), "disk:0;mem:0");
    }
}
