//! The API's figures, through the `metrics` facade (served on `/metrics` by `quark serve
//! --metrics-addr`): calls by method and gRPC status code, and their durations by method.
//!
//! The code is read from the response's headers: a refused call is a "trailers-only" response
//! whose headers carry `grpc-status`; a call that answered has it in its trailers, after the
//! body, and is counted as `Ok` (a stream that fails after its first message is counted `Ok`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;

/// Calls by method (`WorkflowService/StartWorkflow`) and code (`Ok`, `NotFound`, ...).
pub const REQUESTS: &str = "quark_api_requests_total";

/// Call durations in seconds, by method, until the response's headers.
pub const REQUEST_SECONDS: &str = "quark_api_request_seconds";

/// The layer that records them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiMetricsLayer;

impl<S> tower::Layer<S> for ApiMetricsLayer {
    type Service = ApiMetrics<S>;

    fn layer(&self, inner: S) -> ApiMetrics<S> {
        ApiMetrics { inner }
    }
}

/// A service that records its calls' figures.
#[derive(Debug, Clone)]
pub struct ApiMetrics<S> {
    inner: S,
}

/// `/quark.v1.WorkflowService/StartWorkflow` → `WorkflowService/StartWorkflow`.
fn method(path: &str) -> String {
    let path = path.trim_start_matches('/');
    match path.split_once('/') {
        Some((service, method)) => {
            let service = service.rsplit('.').next().unwrap_or(service);
            format!("{service}/{method}")
        }
        None => path.to_string(),
    }
}

fn code<B>(response: &http::Response<B>) -> String {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
    format!("{code:?}")
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for ApiMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    #[allow(clippy::type_complexity)]
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The console's pages are not API calls (and their paths hold instance ids: no labels).
        if request.uri().path().starts_with("/ui") {
            return Box::pin(self.inner.call(request));
        }
        let method = method(request.uri().path());
        #[allow(clippy::disallowed_methods)] // a duration, not a time of the engine's
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            metrics::histogram!(REQUEST_SECONDS, "method" => method.clone())
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(REQUESTS, "method" => method, "code" => code(&response)).increment(1);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_method_is_named_by_its_service_and_name() {
        assert_eq!(
            super::method("/quark.v1.WorkflowService/StartWorkflow"),
            "WorkflowService/StartWorkflow"
        );
        assert_eq!(
            super::method("/grpc.health.v1.Health/Check"),
            "Health/Check"
        );
    }
}
