//! (being written)

/// The result of one upstream request (being written).
#[derive(Debug)]
pub struct UpstreamResult;
