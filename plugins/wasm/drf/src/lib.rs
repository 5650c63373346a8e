//! `allot_drf_wasm.wasm`: the built-in drf policy as a WASM component (wrapped by plugins/wasm/build.sh). It
//! decides on the WIT snapshot's vectors in place (`allot_drf::Drf` is an `IndexedPolicy`).
type Exported = allot_policy_guest::ExportIndexed<allot_drf::Drf>;
allot_policy_guest::export_policy!(Exported);
