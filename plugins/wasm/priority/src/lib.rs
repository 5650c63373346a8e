//! `allot_priority_wasm.wasm`: the built-in priority policy as a WASM component (wrapped by
//! plugins/wasm/build.sh). It decides on the WIT snapshot's vectors in place.
type Exported = allot_policy_guest::ExportIndexed<allot_drf::Priority>;
allot_policy_guest::export_policy!(Exported);
