//! edgeid-certd: certificates for the device and its modules: local CA issuance
//! through keyd, EST enrollment, storage and renewal (ARCHITECTURE.md section 5).
//!
//! Not built yet: this crate holds the place in the workspace until its issue lands.
