//! `allot_drf_wasm.wasm`: the built-in drf policy as a WASM component (wrapped by plugins/wasm/build.sh).
type Exported = allot_policy_guest::Export<allot_drf::Drf>;
allot_policy_guest::export_policy!(Exported);
