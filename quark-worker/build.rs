//! Compiles the API's .proto files (the `service` feature) with the protoc that
//! `protoc-bin-vendored` ships, so that building Quark needs no protobuf install. The descriptor
//! set it writes serves gRPC reflection and the API lock's test.

fn main() {
    #[cfg(feature = "service")]
    service::compile();
}

#[cfg(feature = "service")]
mod service {
    use std::path::PathBuf;

    pub(super) fn compile() {
        let protoc = protoc_bin_vendored::protoc_bin_path()
            .expect("protoc-bin-vendored has no protoc for this platform");
        let include = protoc_bin_vendored::include_path()
            .expect("protoc-bin-vendored has no include directory");
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
        let mut config = tonic_prost_build::Config::new();
        config.protoc_executable(protoc);
        let protos = [
            "proto/quark/v1/workflow.proto",
            "proto/quark/v1/jobs.proto",
            "proto/quark/v1/queues.proto",
            "proto/quark/v1/workers.proto",
            "proto/quark/v1/schedules.proto",
            "proto/quark/v1/outbox.proto",
            "proto/quark/v1/sagas.proto",
        ];
        for proto in protos {
            println!("cargo:rerun-if-changed={proto}");
        }
        tonic_prost_build::configure()
            .file_descriptor_set_path(out.join("quark_v1_descriptor.bin"))
            .compile_with_config(
                config,
                &protos.map(PathBuf::from),
                &[PathBuf::from("proto"), include],
            )
            .expect("compiling the API's .proto files");
    }
}
