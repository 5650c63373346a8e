//! `allot_priority_wasm.wasm`: the built-in priority policy as a WASM component (wrapped by plugins/wasm/build.sh).
type Exported = allot_policy_guest::Export<allot_drf::Priority>;
allot_policy_guest::export_policy!(Exported);
