//! The API lock (`quark-worker/proto/api.lock`): what the .proto files publish, and the check
//! that refuses a change that breaks it.

/// The API lock (`quark-worker/proto/api.lock`) records the published API; a change to the
/// .proto files that removes or alters a published part fails here, and one that adds to it
/// must be recorded (`QUARK_BLESS_API=1`), so the lock always says what is published.
#[test]
fn the_api_lock_holds_what_the_proto_files_publish() {
    use quark_worker::service::{FILE_DESCRIPTOR_SET, api_lock};
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto/api.lock");
    let now = api_lock::lines(FILE_DESCRIPTOR_SET).unwrap();
    let lock = std::fs::read_to_string(&path).unwrap_or_default();
    let diff = api_lock::diff(&lock, &now);
    assert!(
        diff.removed.is_empty(),
        "these published parts of the API were removed or changed, which breaks its clients; \
         add new fields or methods instead:\n  {}",
        diff.removed.join("\n  ")
    );
    if std::env::var_os("QUARK_BLESS_API").is_some_and(|v| v == "1") {
        std::fs::write(&path, api_lock::render(&now)).unwrap();
        return;
    }
    assert!(
        diff.added.is_empty(),
        "{} does not record these additions to the API yet; record them with \
         `QUARK_BLESS_API=1 cargo test -p quark-worker --test worker api_lock`:\n  {}",
        path.display(),
        diff.added.join("\n  ")
    );
}

/// The lock's check fails on a field renumbered, retyped or removed, and on a method removed.
#[test]
fn the_api_lock_catches_changes_that_break_clients() {
    use prost::Message;
    use quark_worker::service::{FILE_DESCRIPTOR_SET, api_lock};
    let published = api_lock::render(&api_lock::lines(FILE_DESCRIPTOR_SET).unwrap());
    let changed = |edit: &dyn Fn(&mut prost_types::FileDescriptorSet)| {
        let mut set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        edit(&mut set);
        api_lock::diff(&published, &api_lock::lines(&set.encode_to_vec()).unwrap())
    };
    let quark_file = |set: &mut prost_types::FileDescriptorSet| -> usize {
        set.file
            .iter()
            .position(|f| f.package() == "quark.v1")
            .unwrap()
    };
    let start_request = |set: &mut prost_types::FileDescriptorSet| {
        let i = quark_file(set);
        let m = set.file[i]
            .message_type
            .iter()
            .position(|m| m.name() == "StartWorkflowRequest")
            .unwrap();
        (i, m)
    };

    let renumbered = changed(&|set| {
        let (i, m) = start_request(set);
        set.file[i].message_type[m].field[1].number = Some(20);
    });
    assert_eq!(
        renumbered.removed,
        ["field quark.v1.StartWorkflowRequest.instance_id = 2 string"]
    );
    let retyped = changed(&|set| {
        let (i, m) = start_request(set);
        set.file[i].message_type[m].field[5]
            .set_type(prost_types::field_descriptor_proto::Type::Int64);
    });
    assert_eq!(
        retyped.removed,
        ["field quark.v1.StartWorkflowRequest.priority = 6 int32"]
    );
    let method_gone = changed(&|set| {
        let i = quark_file(set);
        set.file[i].service[0]
            .method
            .retain(|m| m.name() != "SignalWorkflow");
    });
    assert_eq!(
        method_gone.removed,
        [
            "rpc quark.v1.WorkflowService.SignalWorkflow(quark.v1.SignalWorkflowRequest) returns \
          (quark.v1.SignalWorkflowResponse)"
        ]
    );
    // An addition is no break.
    let added = changed(&|set| {
        let (i, m) = start_request(set);
        let mut field = set.file[i].message_type[m].field[0].clone();
        field.name = Some("memo".into());
        field.number = Some(99);
        set.file[i].message_type[m].field.push(field);
    });
    assert!(added.removed.is_empty(), "{added:?}");
    assert_eq!(
        added.added,
        ["field quark.v1.StartWorkflowRequest.memo = 99 string"]
    );
}
