//! The access scheduler (arrives with its own issue): answers "which gateways should this
//! client use" by gray-release, proximity and least-load rules over the fleet's load reports.
