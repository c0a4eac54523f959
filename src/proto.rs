//! Generated protobuf and gRPC code for `sidb.v1` (from `proto/` by build.rs).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/sidb.v1.rs"));

/// The encoded `FileDescriptorSet` of the API, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sidb_descriptor.bin"));
