//! The gateway: holds client long connections (arrives with the gateway-core issue).

