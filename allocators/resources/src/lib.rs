//! Resources: scalars in fixed point and ranges (crate `allot-resources`).
//!
//! One type, [`Resources`], counts what agents have, offers hold and tasks use, everywhere in Allot: the
//! policies (through `allot-policy`, which re-exports it), the services and the framework SDK. It has no
//! dependency on the protocol; `allot_common::convert` turns it into protobuf `Resource` lists and back.
//!
//! Scalars (`cpus` in cores, `mem` and `disk` in MiB, `gpus`) are stored in thousandths, as Mesos rounds
//! scalars to three decimal places, so that sums and differences never drift. Ranges (`ports`) are sets of
//! inclusive intervals.
//!
//! The text form is Mesos' resource string: `cpus:2;mem:1024;ports:[31000-31099,32000-32000]`.
//!
//! Scalar names are interned (one `&'static str` per distinct name, at most [`MAX_KINDS`] of them) and a bag
//! keeps up to four scalars inline, sorted by name: copying, adding and comparing bags allocates nothing,
//! which is what an allocation cycle over tens of thousands of agents does all the time.

mod limits;

pub use limits::Limits;
use smallvec::SmallVec;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

/// Scalars are stored as integer thousandths.
pub const SCALE: i64 = 1000;

/// The largest scalar accepted, in units: beyond this fixed point would overflow on sums.
pub const MAX_SCALAR: f64 = 1e12;

/// The most distinct scalar names a process accepts from input (names are interned and never freed).
pub const MAX_KINDS: usize = 1024;

fn kinds() -> &'static Mutex<HashSet<&'static str>> {
    static KINDS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    KINDS.get_or_init(Default::default)
}

/// The interned `name`; `None` when it would be new and [`MAX_KINDS`] names are already interned (only when
/// `capped`).
fn intern(name: &str, capped: bool) -> Option<&'static str> {
    let mut set = kinds().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = set.get(name) {
        return Some(k);
    }
    if capped && set.len() >= MAX_KINDS {
        return None;
    }
    let k: &'static str = Box::leak(name.to_string().into_boxed_str());
    set.insert(k);
    Some(k)
}

/// A scalar resource name interned by this process: copied and compared as a pointer. Made once per name
/// (say, per snapshot kind) so that building bags from index-form amounts takes no lock per value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind(&'static str);

impl Kind {
    /// The interned `name` (interned now if new; no [`MAX_KINDS`] cap: meant for names that come from bags
    /// or snapshots, which input has already capped).
    pub fn new(name: &str) -> Kind {
        Kind(intern(name, false).expect("uncapped interning"))
    }

    /// The name.
    pub fn name(self) -> &'static str {
        self.0
    }
}

/// Why a resource value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourcesError {
    /// The value is NaN or infinite.
    #[error("resource '{name}' is not a finite number")]
    NotFinite {
        /// Resource name.
        name: String,
    },
    /// The value is below zero.
    #[error("resource '{name}' is negative ({value})")]
    Negative {
        /// Resource name.
        name: String,
        /// The refused value, as given.
        value: String,
    },
    /// The value is larger than [`MAX_SCALAR`].
    #[error("resource '{name}' is too large ({value}); the limit is 1e12")]
    TooLarge {
        /// Resource name.
        name: String,
        /// The refused value, as given.
        value: String,
    },
    /// A range whose begin is after its end.
    #[error("resource '{name}' has an empty range {begin}-{end}")]
    BadRange {
        /// Resource name.
        name: String,
        /// Range begin.
        begin: u64,
        /// Range end.
        end: u64,
    },
    /// The resource has no name.
    #[error("a resource has an empty name")]
    NoName,
    /// The process has seen [`MAX_KINDS`] distinct scalar names already.
    #[error("resource '{name}' would be distinct scalar name number {MAX_KINDS}+1; refusing it")]
    TooManyKinds {
        /// Resource name.
        name: String,
    },
    /// The text form could not be parsed.
    #[error("cannot parse resources '{0}': expected e.g. 'cpus:2;mem:1024;ports:[31000-31099]'")]
    Parse(String),
}

/// A bag of resources: named scalars in thousandths and named range sets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    /// Sorted by name, every value > 0.
    scalars: SmallVec<[(&'static str, i64); 4]>,
    ranges: BTreeMap<String, Vec<(u64, u64)>>,
}

impl Resources {
    /// An empty bag.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a scalar given in units (cores, MiB, ...).
    ///
    /// # Errors
    /// NaN, infinite, negative or values above [`MAX_SCALAR`] are refused.
    pub fn add_scalar(&mut self, name: &str, value: f64) -> Result<(), ResourcesError> {
        let milli = to_milli(name, value)?;
        if milli > 0 {
            let k = intern(name, true)
                .ok_or_else(|| ResourcesError::TooManyKinds { name: name.into() })?;
            self.add_milli(k, milli);
        }
        Ok(())
    }

    /// Adds the inclusive range `[begin, end]` to the range resource `name`.
    ///
    /// # Errors
    /// [`ResourcesError::BadRange`] if `begin > end`.
    pub fn add_range(&mut self, name: &str, begin: u64, end: u64) -> Result<(), ResourcesError> {
        if name.is_empty() {
            return Err(ResourcesError::NoName);
        }
        if begin > end {
            return Err(ResourcesError::BadRange {
                name: name.into(),
                begin,
                end,
            });
        }
        let set = self.ranges.entry(name.to_string()).or_default();
        set.push((begin, end));
        normalize(set);
        Ok(())
    }

    /// A scalar in units (0.0 when absent).
    pub fn scalar(&self, name: &str) -> f64 {
        self.scalar_milli(name) as f64 / SCALE as f64
    }

    /// A scalar in thousandths (0 when absent).
    pub fn scalar_milli(&self, name: &str) -> i64 {
        self.find(name).map_or(0, |i| self.scalars[i].1)
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        // Names from other bags are the same interned `&'static str`: the usual hit costs no byte compare.
        if let Some(i) = self
            .scalars
            .iter()
            .position(|(k, _)| std::ptr::eq(*k, name))
        {
            return Ok(i);
        }
        self.scalars.binary_search_by(|(k, _)| (*k).cmp(name))
    }

    /// Adds `milli` (> 0) to the interned kind `k`.
    fn add_milli(&mut self, k: &'static str, milli: i64) {
        match self.find(k) {
            Ok(i) => self.scalars[i].1 += milli,
            Err(i) => self.scalars.insert(i, (k, milli)),
        }
    }

    /// Sets a scalar in thousandths; 0 or less removes it. Meant for names that come from other bags or from
    /// a snapshot's kinds: new names are interned without the [`MAX_KINDS`] cap that input goes through.
    pub fn set_scalar_milli(&mut self, name: &str, milli: i64) {
        self.set_milli(name, milli, || Kind::new(name).0);
    }

    /// Sets scalar `name` to `milli` (0 or less removes it); `interned` gives the name to store when it is new.
    fn set_milli(&mut self, name: &str, milli: i64, interned: impl FnOnce() -> &'static str) {
        match self.find(name) {
            Ok(i) if milli > 0 => self.scalars[i].1 = milli,
            Ok(i) => {
                self.scalars.remove(i);
            }
            Err(i) if milli > 0 => self.scalars.insert(i, (interned(), milli)),
            Err(_) => {}
        }
    }

    /// Sets scalar `kind` in thousandths; 0 or less removes it. [`Resources::set_scalar_milli`] without the
    /// interning lookup.
    pub fn set_kind_milli(&mut self, kind: Kind, milli: i64) {
        self.set_milli(kind.0, milli, || kind.0);
    }

    /// Scalar `kind` in thousandths (0 when absent), found by pointer: no name is compared.
    pub fn kind_milli(&self, kind: Kind) -> i64 {
        self.scalars
            .iter()
            .find(|(k, _)| std::ptr::eq(*k, kind.0))
            .map_or(0, |&(_, v)| v)
    }

    /// Every scalar as `(kind, thousandths)`, sorted by name.
    pub fn kinds(&self) -> impl Iterator<Item = (Kind, i64)> {
        self.scalars.iter().map(|&(k, v)| (Kind(k), v))
    }

    /// Every scalar as `(name, thousandths)`, sorted by name.
    pub fn scalars(&self) -> impl Iterator<Item = (&str, i64)> {
        self.scalars.iter().map(|&(k, v)| (k, v))
    }

    /// Every range resource as `(name, intervals)`, sorted by name; intervals are disjoint and sorted.
    pub fn ranges(&self) -> impl Iterator<Item = (&str, &[(u64, u64)])> {
        self.ranges.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Whether nothing is in the bag.
    pub fn is_empty(&self) -> bool {
        self.scalars.is_empty() && self.ranges.is_empty()
    }

    /// Whether every scalar and range of `other` is in `self`.
    pub fn contains(&self, other: &Resources) -> bool {
        let scalars = if self.same_kinds(other) {
            self.scalars
                .iter()
                .zip(&other.scalars)
                .all(|(a, b)| a.1 >= b.1)
        } else {
            other
                .scalars
                .iter()
                .all(|&(k, v)| self.scalar_milli(k) >= v)
        };
        scalars
            && other.ranges.iter().all(|(k, want)| {
                let have = self.ranges.get(k).map(Vec::as_slice).unwrap_or(&[]);
                want.iter()
                    .all(|&(b, e)| have.iter().any(|&(hb, he)| hb <= b && e <= he))
            })
    }

    /// Whether both bags have the same scalar kinds, in the same order (the usual case in a cycle: every bag
    /// holds cpus, mem, disk), so that arithmetic can go entry by entry.
    fn same_kinds(&self, other: &Resources) -> bool {
        self.scalars.len() == other.scalars.len()
            && self
                .scalars
                .iter()
                .zip(&other.scalars)
                .all(|(a, b)| std::ptr::eq(a.0, b.0))
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Resources) {
        if self.same_kinds(other) {
            for (a, b) in self.scalars.iter_mut().zip(&other.scalars) {
                a.1 += b.1;
            }
        } else {
            for &(k, v) in &other.scalars {
                self.add_milli(k, v);
            }
        }
        for (k, v) in &other.ranges {
            let set = self.ranges.entry(k.clone()).or_default();
            set.extend_from_slice(v);
            normalize(set);
        }
    }

    /// Removes `other` from `self`, saturating at zero (callers check [`Resources::contains`] first where an
    /// overdraw is an error).
    pub fn subtract(&mut self, other: &Resources) {
        if self.same_kinds(other) {
            for (a, b) in self.scalars.iter_mut().zip(&other.scalars) {
                a.1 -= b.1;
            }
            self.scalars.retain(|(_, v)| *v > 0);
        } else {
            for &(k, v) in &other.scalars {
                if let Ok(i) = self.find(k) {
                    self.scalars[i].1 -= v;
                    if self.scalars[i].1 <= 0 {
                        self.scalars.remove(i);
                    }
                }
            }
        }
        for (k, remove) in &other.ranges {
            if let Some(set) = self.ranges.get_mut(k) {
                for &(rb, re) in remove {
                    let mut out = Vec::with_capacity(set.len() + 1);
                    for &(b, e) in set.iter() {
                        if re < b || rb > e {
                            out.push((b, e));
                            continue;
                        }
                        if b < rb {
                            out.push((b, rb - 1));
                        }
                        if re < e {
                            out.push((re + 1, e));
                        }
                    }
                    *set = out;
                }
                if set.is_empty() {
                    self.ranges.remove(k);
                }
            }
        }
    }

    /// `self + other`, as a new bag.
    pub fn plus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        r.add(other);
        r
    }

    /// `self - other` (saturating), as a new bag.
    pub fn minus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        r.subtract(other);
        r
    }
}

fn to_milli(name: &str, value: f64) -> Result<i64, ResourcesError> {
    if name.is_empty() {
        return Err(ResourcesError::NoName);
    }
    if !value.is_finite() {
        return Err(ResourcesError::NotFinite { name: name.into() });
    }
    if value < 0.0 {
        return Err(ResourcesError::Negative {
            name: name.into(),
            value: value.to_string(),
        });
    }
    if value > MAX_SCALAR {
        return Err(ResourcesError::TooLarge {
            name: name.into(),
            value: value.to_string(),
        });
    }
    Ok((value * SCALE as f64).round() as i64)
}

fn normalize(set: &mut Vec<(u64, u64)>) {
    set.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(set.len());
    for &(b, e) in set.iter() {
        match out.last_mut() {
            Some(last) if b <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => out.push((b, e)),
        }
    }
    *set = out;
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for &(k, v) in &self.scalars {
            if !first {
                f.write_str(";")?;
            }
            first = false;
            write!(f, "{k}:{}", v as f64 / SCALE as f64)?;
        }
        for (k, v) in &self.ranges {
            if !first {
                f.write_str(";")?;
            }
            first = false;
            let parts: Vec<String> = v.iter().map(|(b, e)| format!("{b}-{e}")).collect();
            write!(f, "{k}:[{}]", parts.join(","))?;
        }
        Ok(())
    }
}

/// The `name:value` parts of Mesos' resource text `s` (split at `;`, trimmed, empty parts skipped), each name
/// free of `(`, `)` and spaces; a part without `:` or with such a name is [`ResourcesError::Parse`].
fn text_parts(s: &str) -> impl Iterator<Item = Result<(&str, &str), ResourcesError>> {
    s.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(move |part| {
            let (name, value) = part
                .split_once(':')
                .ok_or_else(|| ResourcesError::Parse(s.into()))?;
            let (name, value) = (name.trim(), value.trim());
            if name.contains(['(', ')', ' ']) {
                return Err(ResourcesError::Parse(s.into()));
            }
            Ok((name, value))
        })
}

impl FromStr for Resources {
    type Err = ResourcesError;

    /// Parses Mesos' resource string, e.g. `cpus:2;mem:1024;ports:[31000-31099]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut r = Resources::new();
        for part in text_parts(s) {
            let (name, value) = part?;
            if let Some(inner) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
                for range in inner.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                    let (b, e) = range
                        .split_once('-')
                        .ok_or_else(|| ResourcesError::Parse(s.into()))?;
                    let b: u64 = b
                        .trim()
                        .parse()
                        .map_err(|_| ResourcesError::Parse(s.into()))?;
                    let e: u64 = e
                        .trim()
                        .parse()
                        .map_err(|_| ResourcesError::Parse(s.into()))?;
                    r.add_range(name, b, e)?;
                }
            } else {
                let v: f64 = value.parse().map_err(|_| ResourcesError::Parse(s.into()))?;
                r.add_scalar(name, v)?;
            }
        }
        Ok(r)
    }
}

/// Parses Mesos' resource text with static reservations, e.g. `cpus:4;mem:4096;cpus(db):2;mem(db):1024`:
/// returns the unreserved resources and the reserved ones by role. `name(*)` means unreserved.
///
/// # Errors
/// [`ResourcesError`] for text that is not of that form or values that are invalid.
pub fn parse_reservations(
    s: &str,
) -> Result<(Resources, std::collections::BTreeMap<String, Resources>), ResourcesError> {
    let mut unreserved = Vec::new();
    let mut reserved: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once(':')
            .ok_or_else(|| ResourcesError::Parse(s.into()))?;
        match name.trim().split_once('(') {
            Some((n, role)) => {
                let role = role
                    .strip_suffix(')')
                    .ok_or_else(|| ResourcesError::Parse(s.into()))?
                    .trim();
                if role.is_empty() || role.contains(['(', ')', '/']) {
                    return Err(ResourcesError::Parse(s.into()));
                }
                let text = format!("{}:{value}", n.trim());
                if role == "*" {
                    unreserved.push(text);
                } else {
                    reserved.entry(role.to_string()).or_default().push(text);
                }
            }
            None => unreserved.push(part.to_string()),
        }
    }
    let unreserved = unreserved.join(";").parse()?;
    let mut out = std::collections::BTreeMap::new();
    for (role, parts) in reserved {
        out.insert(role, parts.join(";").parse()?);
    }
    Ok((unreserved, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_reservations_parse() {
        let (u, r) =
            parse_reservations("cpus:4;mem:1024;cpus(db):2;mem(db):512;disk(*):10").unwrap();
        assert_eq!(u, "cpus:4;mem:1024;disk:10".parse().unwrap());
        assert_eq!(r["db"], "cpus:2;mem:512".parse().unwrap());
        assert!(parse_reservations("cpus(db:2").is_err());
        assert!("cpus(db):2".parse::<Resources>().is_err());
    }

    fn r(s: &str) -> Resources {
        s.parse().unwrap()
    }

    #[test]
    fn fixed_point_sums_do_not_drift() {
        let mut acc = Resources::new();
        for _ in 0..10 {
            acc.add(&r("cpus:0.1"));
        }
        assert_eq!(acc, r("cpus:1"));
        for _ in 0..10 {
            acc.subtract(&r("cpus:0.1"));
        }
        assert!(acc.is_empty());
    }

    #[test]
    fn contains_and_subtract_ranges() {
        let agent = r("cpus:4;mem:1024;ports:[31000-31009]");
        assert!(agent.contains(&r("cpus:4;ports:[31002-31003]")));
        assert!(!agent.contains(&r("cpus:4.001")));
        assert!(!agent.contains(&r("ports:[31009-31010]")));
        let left = agent.minus(&r("cpus:1;ports:[31002-31003]"));
        assert_eq!(left, r("cpus:3;mem:1024;ports:[31000-31001,31004-31009]"));
        assert_eq!(left.plus(&r("cpus:1;ports:[31002-31003]")), agent);
    }

    #[test]
    fn bad_values_are_refused() {
        let mut x = Resources::new();
        assert!(matches!(
            x.add_scalar("cpus", f64::NAN),
            Err(ResourcesError::NotFinite { .. })
        ));
        assert!(matches!(
            x.add_scalar("cpus", -1.0),
            Err(ResourcesError::Negative { .. })
        ));
        assert!(matches!(
            x.add_scalar("mem", 1e308),
            Err(ResourcesError::TooLarge { .. })
        ));
        assert!(matches!(
            x.add_range("ports", 5, 4),
            Err(ResourcesError::BadRange { .. })
        ));
        assert!("cpus".parse::<Resources>().is_err());
        assert!("cpus:abc".parse::<Resources>().is_err());
    }

    #[test]
    fn display_round_trips() {
        let x = r("cpus:1.5;mem:256;ports:[1-2,4-4]");
        assert_eq!(x.to_string(), "cpus:1.5;mem:256;ports:[1-2,4-4]");
        assert_eq!(x.to_string().parse::<Resources>().unwrap(), x);
    }
}
