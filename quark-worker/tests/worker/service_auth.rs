//! Who may call the API, on both backends: every method refuses a call without a valid token
//! (UNAUTHENTICATED) or outside its token's scope (PERMISSION_DENIED), and a refused call
//! changes nothing; a revoked token stops working; the command line issues, lists and revokes
//! tokens without ever storing or showing a secret twice.

use std::sync::Arc;

use prost::Message;
use quark_history::testing::TestStore;
use quark_history::{InstanceFilter, Scope};
use quark_worker::cli::{Command, Output, run_on};
use quark_worker::service::proto::workflow_service_client::WorkflowServiceClient;
use quark_worker::service::proto::{self};
use quark_worker::service::{FILE_DESCRIPTOR_SET, ServiceOptions};
use tonic::Code;
use tonic::transport::Channel;

use crate::service::{Authed, Bearer, api, start, worker};

quark_history::backend_tests!(
    it_refuses_every_method_without_a_valid_token_and_changes_nothing,
    it_holds_each_token_to_its_scope,
    it_stops_honouring_a_token_once_it_is_revoked,
    it_holds_a_token_to_its_rate_limit,
);

/// The methods of every `quark.v1` service, as the descriptors publish them.
fn methods() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .iter()
        .filter(|f| f.package() == "quark.v1")
        .flat_map(|f| &f.service)
        .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
        .collect()
}

/// Calls `method` with harmless arguments, and keeps only whether it was let in.
async fn call<T>(client: &mut WorkflowServiceClient<T>, method: &str) -> Result<(), tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let id = "auth-target".to_string();
    match method {
        "StartWorkflow" => client
            .start_workflow(start("greet", &id, serde_json::json!("Mallory")))
            .await
            .map(drop),
        "SignalWorkflow" => client
            .signal_workflow(proto::SignalWorkflowRequest {
                instance_id: id,
                name: "polite".into(),
                value: None,
            })
            .await
            .map(drop),
        "CancelWorkflow" => client
            .cancel_workflow(proto::CancelWorkflowRequest {
                instance_id: id,
                reason: "x".into(),
            })
            .await
            .map(drop),
        "TerminateWorkflow" => client
            .terminate_workflow(proto::TerminateWorkflowRequest {
                instance_id: id,
                reason: "x".into(),
            })
            .await
            .map(drop),
        "DescribeWorkflow" => client
            .describe_workflow(proto::DescribeWorkflowRequest { instance_id: id })
            .await
            .map(drop),
        "ListWorkflows" => client
            .list_workflows(proto::ListWorkflowsRequest::default())
            .await
            .map(drop),
        "GetWorkflowHistory" => client
            .get_workflow_history(proto::GetWorkflowHistoryRequest {
                instance_id: id,
                ..Default::default()
            })
            .await
            .map(drop),
        "GetWorkflowResult" => client
            .get_workflow_result(proto::GetWorkflowResultRequest { instance_id: id })
            .await
            .map(drop),
        "ListWorkflowTypes" => client
            .list_workflow_types(proto::ListWorkflowTypesRequest {})
            .await
            .map(drop),
        other => panic!("method {other} is not covered by this test: add it to `call`"),
    }
}

fn with(channel: &Channel, token: &str) -> Authed {
    WorkflowServiceClient::with_interceptor(channel.clone(), Bearer(token.parse().unwrap()))
}

async fn it_refuses_every_method_without_a_valid_token_and_changes_nothing(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let api = api(t, ServiceOptions::default()).await;
    let valid = quark_worker::service::auth::issue(&*t.store, "real", Scope::Admin, None)
        .await
        .unwrap()
        .token;
    let (id, _secret) = valid["qk_".len()..].split_once('_').unwrap();
    let forged = format!("Bearer qk_{id}_{}", "A".repeat(43));
    let mut anonymous = WorkflowServiceClient::new(api.channel.clone());
    let wrong = [
        "Basic dXNlcjpwYXNz".to_string(),
        "Bearer not-a-quark-token".to_string(),
        "Bearer qk_0000000000000000_secret".to_string(),
        forged,
    ];
    let methods = methods();
    assert!(methods.len() >= 9, "{methods:?}");
    for method in &methods {
        let e = call(&mut anonymous, method).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{method}: {e:?}");
        assert!(e.message().contains("no token"), "{method}: {e:?}");
        for header in &wrong {
            let e = call(&mut with(&api.channel, header), method)
                .await
                .unwrap_err();
            assert_eq!(
                e.code(),
                Code::Unauthenticated,
                "{method} with {header}: {e:?}"
            );
        }
    }
    let all = t
        .store
        .list_instances(InstanceFilter::default())
        .await
        .unwrap();
    assert!(all.is_empty(), "a refused call started {all:?}");
    // The same call with the real token is let in.
    call(
        &mut with(&api.channel, &format!("Bearer {valid}")),
        "StartWorkflow",
    )
    .await
    .unwrap();
    running.shutdown().await;
}

async fn it_holds_each_token_to_its_scope(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let api = api(t, ServiceOptions::default()).await;
    let token = async |scope| {
        let issued = quark_worker::service::auth::issue(&*t.store, "scoped", scope, None)
            .await
            .unwrap();
        with(&api.channel, &format!("Bearer {}", issued.token))
    };
    let mut reader = token(Scope::Read).await;
    let mut writer = token(Scope::Write).await;
    const WRITES: [&str; 4] = [
        "StartWorkflow",
        "SignalWorkflow",
        "CancelWorkflow",
        "TerminateWorkflow",
    ];
    for method in methods() {
        let outcome = call(&mut reader, &method).await;
        if WRITES.contains(&method.as_str()) {
            let e = outcome.unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{method}: {e:?}");
            assert!(
                e.message().contains("has scope read") && e.message().contains("needs write"),
                "{e:?}"
            );
        } else if let Err(e) = outcome {
            // Let in: whatever it says is about the (absent) instance, not the token.
            assert_eq!(e.code(), Code::NotFound, "{method}: {e:?}");
        }
    }
    assert!(
        t.store.get_instance("auth-target").await.unwrap().is_none(),
        "a read token started an instance"
    );
    call(&mut writer, "StartWorkflow").await.unwrap();
    assert!(t.store.get_instance("auth-target").await.unwrap().is_some());
    running.shutdown().await;
}

async fn it_stops_honouring_a_token_once_it_is_revoked(t: &TestStore) {
    let api = api(t, ServiceOptions::default()).await;
    let issued = quark_worker::service::auth::issue(&*t.store, "leaving", Scope::Read, None)
        .await
        .unwrap();
    let mut client = with(&api.channel, &format!("Bearer {}", issued.token));
    call(&mut client, "ListWorkflows").await.unwrap();
    assert!(t.store.revoke_token(&issued.record.id).await.unwrap());
    // A server trusts a token it verified for a second (by the store's clock): within it, the
    // revoked token still works; past it, it is refused.
    call(&mut client, "ListWorkflows").await.unwrap();
    t.clock
        .advance(quark_worker::service::auth::TOKEN_CACHE_TTL);
    let e = call(&mut client, "ListWorkflows").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("invalid or revoked token"), "{e:?}");
    assert!(!t.store.revoke_token(&issued.record.id).await.unwrap());
}

/// `quark token create|list|revoke`: the secret is printed once and never stored.
#[tokio::test]
async fn it_issues_lists_and_revokes_tokens_from_the_command_line() {
    use quark_worker::cli::TokenCommand;
    let t = quark_history::testing::sqlite().await;
    let run = async |cmd: TokenCommand, output: Output| {
        let mut out = Vec::new();
        run_on(
            Arc::clone(&t.store),
            Command::Token(cmd),
            output,
            None,
            &mut out,
        )
        .await
        .map(|()| String::from_utf8(out).unwrap())
    };
    let created = run(
        TokenCommand::Create {
            name: "ci".into(),
            scope: Scope::Write,
            rate_limit: Some(50),
        },
        Output::Json,
    )
    .await
    .unwrap();
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let token = created["token"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(token.starts_with(&format!("qk_{id}_")), "{token}");
    assert_eq!(created["scope"], "write");
    assert_eq!(created["rate_limit"], 50);
    let stored = t.store.token(id).await.unwrap().unwrap();
    let secret = &token[format!("qk_{id}_").len()..];
    assert_ne!(
        stored.secret_hash, secret,
        "the secret itself is not stored"
    );
    assert_eq!(
        stored.secret_hash,
        blake3::hash(secret.as_bytes()).to_hex().to_string()
    );

    let listed = run(TokenCommand::List, Output::Table).await.unwrap();
    assert!(listed.contains(id) && listed.contains("ci") && listed.contains("write"));
    assert!(!listed.contains(secret), "a listing shows no secret");

    let revoked = run(TokenCommand::Revoke { id: id.into() }, Output::Table)
        .await
        .unwrap();
    assert_eq!(revoked, format!("token {id} revoked\n"));
    assert!(
        t.store
            .token(id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
    let again = run(TokenCommand::Revoke { id: id.into() }, Output::Table)
        .await
        .unwrap_err();
    assert!(again.to_string().contains("revoked already"), "{again}");
    let unknown = run(TokenCommand::Revoke { id: "nope".into() }, Output::Table)
        .await
        .unwrap_err();
    assert!(unknown.to_string().contains("no token `nope`"), "{unknown}");
    let unnamed = run(
        TokenCommand::Create {
            name: " ".into(),
            scope: Scope::Read,
            rate_limit: None,
        },
        Output::Table,
    )
    .await
    .unwrap_err();
    assert!(unnamed.to_string().contains("needs a name"), "{unnamed}");
    assert_eq!(t.store.list_tokens().await.unwrap().len(), 1);
}

async fn it_holds_a_token_to_its_rate_limit(t: &TestStore) {
    let api = api(t, ServiceOptions::default()).await;
    let limited = quark_worker::service::auth::issue(&*t.store, "batch-job", Scope::Read, Some(5))
        .await
        .unwrap();
    let free = quark_worker::service::auth::issue(&*t.store, "dashboard", Scope::Read, None)
        .await
        .unwrap();
    let mut limited = with(&api.channel, &format!("Bearer {}", limited.token));
    let mut free = with(&api.channel, &format!("Bearer {}", free.token));
    // The store's clock stands still: a burst of one second's worth, then refusals.
    for _ in 0..5 {
        call(&mut limited, "ListWorkflows").await.unwrap();
    }
    let e = call(&mut limited, "ListWorkflows").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limited to 5 calls a second"), "{e:?}");
    // Another token is not held to it.
    for _ in 0..20 {
        call(&mut free, "ListWorkflows").await.unwrap();
    }
    // 400 ms refill two calls at five a second, and no more.
    t.clock.advance(std::time::Duration::from_millis(400));
    call(&mut limited, "ListWorkflows").await.unwrap();
    call(&mut limited, "ListWorkflows").await.unwrap();
    let e = call(&mut limited, "ListWorkflows").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let zero = quark_worker::service::auth::issue(&*t.store, "nothing", Scope::Read, Some(0)).await;
    assert!(zero.is_err(), "a limit of 0 is refused");
}
