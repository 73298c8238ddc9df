//! The gRPC services a supplier serves. Each is thin: it checks who is
//! calling, validates the request, calls the store, and maps errors to a
//! status in one place.

pub mod identity;
pub mod mailbox;
pub mod storage;
