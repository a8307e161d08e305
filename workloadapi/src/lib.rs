//! edgeid-workloadd: the IoT Edge compatible workload API that modules call
//! (ARCHITECTURE.md section 7).
//!
//! Not built yet: this crate holds the place in the workspace until its issue lands.
