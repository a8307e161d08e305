//! The SPIFFE Workload API's messages, server and client, generated at build
//! time from `proto/workload.proto`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/_.rs"));
