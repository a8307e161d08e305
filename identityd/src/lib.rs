//! edgeid-identityd: device provisioning and module identities
//! (ARCHITECTURE.md section 6).
//!
//! Not built yet: this crate holds the place in the workspace until its issue lands.
