//! The broker's two outbound links, each a struct over its clients: [`allocator::AllocatorLink`] (calls to
//! the leading allocator, offer returns and ended tasks batched) and [`agents::AgentLink`] (launches, kills,
//! reconciliation and acknowledgements to agents).

pub mod agents;
pub mod allocator;
