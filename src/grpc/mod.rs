//! The gRPC front end: KServe's `inference.GRPCInferenceService` with the RPCs Triton's clients
//! add (configuration, statistics, repository), on its own port.
//!
//! It is a second wire onto the same server: requests go through the same `routing` (rollouts,
//! batching, logging), the same admin check and the same error type as HTTP, whose status each
//! error's gRPC code is derived from. Connections go through the HTTP accept loop (connection
//! limit, watchdogs, admission, unread answers counted, drain on shutdown); each message is
//! admitted by [`messages`] (size, time, budget, counts walked by [`scan`]) before tonic buffers
//! it, and tonic only decodes, dispatches and encodes. Large requests are turned into tensors,
//! and large results into messages, on the blocking pool, as HTTP does.

mod messages;
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod proto;
mod scan;
mod status;
mod tensors;
mod views;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use crate::config::ModelConfig;
use crate::listener::{serve_connections, Protocol};
use crate::repository::LoadOverride;
use crate::routing::RequestKeys;
use crate::service::{self, check_bearer, ApiError, AppState, InferCodec};
use messages::{Bounds, Held, Messages};
use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// Requests of one `ModelStreamInfer` stream in flight at once; the next waits for a slot, so a
/// client streaming faster than the models answer is slowed down, never buffered without bound.
const STREAM_IN_FLIGHT: usize = 64;

/// Serves the gRPC service on `listener` until `shutdown` resolves, then drains like HTTP.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    tls: Option<Arc<crate::tls::Tls>>,
) {
    let service = GrpcInferenceServiceServer::new(Api {
        state: Arc::clone(&state),
    })
    // A message is bounded as an HTTP body is; responses are as large as the model makes them.
    .max_decoding_message_size(state.config.max_body_bytes)
    .max_encoding_message_size(usize::MAX);
    let bounds = Bounds {
        max_bytes: state.config.max_body_bytes,
        timeout: state.config.connections.body_read_timeout,
        budget: Arc::clone(&state.body_budget),
        offload: state.offload.clone(),
    };
    serve_connections(
        listener,
        state,
        shutdown,
        Protocol::Grpc,
        tls,
        move || Tracked {
            inner: service.clone(),
            bounds: bounds.clone(),
        },
        refusal,
    )
    .await
}

/// A refusal at admission, as gRPC answers it: trailers-only, the status in the headers.
fn refusal(e: ApiError) -> ::http::Response<StatusFixed> {
    e.into_status()
        .into_http::<tonic::body::Body>()
        .map(|inner| StatusFixed { inner })
}

/// The tonic service as a hyper one, its request messages admitted on their way in.
#[derive(Clone)]
struct Tracked {
    inner: GrpcInferenceServiceServer<Api>,
    bounds: Bounds,
}

impl hyper::service::Service<http::Request<Incoming>> for Tracked {
    type Response = ::http::Response<StatusFixed>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        use tonic::codegen::Service as _;
        let mut inner = self.inner.clone();
        let held = Held::default();
        let (mut parts, body) = req.into_parts();
        let body = Messages::new(body, parts.uri.path(), self.bounds.clone(), held.clone());
        parts.extensions.insert(held);
        let req = http::Request::from_parts(parts, body);
        Box::pin(async move {
            std::future::poll_fn(|cx| {
                tonic::codegen::Service::<::http::Request<Messages<Incoming>>>::poll_ready(
                    &mut inner, cx,
                )
            })
            .await?;
            let response = inner.call(req).await;
            // A refusal before the handler ran is trailers-only: the status is in the headers.
            response.map(|mut r| {
                fix_status(r.headers_mut());
                r.map(|body| StatusFixed { inner: body })
            })
        })
    }
}

/// Two of tonic's statuses, corrected: gRPC's status guide names RESOURCE_EXHAUSTED for a
/// message over the receiver's limit (Triton's clients expect it) where tonic's decoder answers
/// OUT_OF_RANGE, and a message prost cannot decode is the client's error (INVALID_ARGUMENT),
/// not INTERNAL. The body passes through untouched except for the status in its trailers.
struct StatusFixed {
    inner: tonic::body::Body,
}

impl http_body::Body for StatusFixed {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = polled {
            let mut frame = frame;
            if let Some(trailers) = frame.trailers_mut() {
                fix_status(trailers);
            }
            return std::task::Poll::Ready(Some(Ok(frame)));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn fix_status(headers: &mut ::http::HeaderMap) {
    let Some(code) = headers.get("grpc-status").map(|v| v.as_bytes().to_vec()) else {
        return;
    };
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(|m| {
            percent_encoding::percent_decode_str(m)
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let fixed = match code.as_slice() {
        b"11" if message.contains("message length too large") => "8",
        b"13" if message.contains("failed to decode Protobuf message") => "3",
        _ => return,
    };
    headers.insert("grpc-status", ::http::HeaderValue::from_static(fixed));
}

/// The service's state: the server's.
struct Api {
    state: Arc<AppState>,
}

/// Sticky canary keys come from request metadata as they come from HTTP headers.
struct Metadata(tonic::metadata::MetadataMap);

impl RequestKeys for Metadata {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(|v| v.as_bytes())
    }
}

/// A version named in a request: the empty string names none.
fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

impl Api {
    /// Counts the call and turns its error into a status.
    fn finish<T>(
        &self,
        method: &'static str,
        result: Result<T, ApiError>,
    ) -> Result<Response<T>, Status> {
        let (code, result) = match result {
            Ok(value) => (tonic::Code::Ok, Ok(Response::new(value))),
            Err(e) => {
                if e.status().is_server_error() {
                    tracing::warn!(error = %e, method, "gRPC call failed");
                } else {
                    tracing::debug!(error = %e, method, "gRPC call refused");
                }
                let status = e.into_status();
                (status.code(), Err(status))
            }
        };
        self.state.metrics.record_grpc(method, code_name(code));
        result
    }

    fn authorize(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), ApiError> {
        check_bearer(
            &self.state,
            metadata.get("authorization").map(|v| v.as_bytes()),
        )
    }

    fn authorize_inference(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), ApiError> {
        if self.state.config.protect_inference {
            self.authorize(metadata)?;
        }
        Ok(())
    }
}

/// One inference, from message to message, through the service's one path. `size` is what
/// the message holds (its admitted bytes).
async fn infer(
    state: &AppState,
    mut message: proto::ModelInferRequest,
    size: usize,
    keys: &Metadata,
) -> Result<proto::ModelInferResponse, ApiError> {
    let model = std::mem::take(&mut message.model_name);
    let named = std::mem::take(&mut message.model_version);
    service::infer::<Protobuf>(state, &model, version(&named), keys, message, size).await
}

/// The KServe V2 protobuf messages, tensors in raw contents or typed fields.
struct Protobuf;

impl InferCodec for Protobuf {
    type Payload = proto::ModelInferRequest;
    type Answer = proto::ModelInferResponse;

    fn decode(message: Self::Payload) -> Result<crate::request::InferRequest, ApiError> {
        Ok(tensors::decode(message)?)
    }

    fn answer_size(result: &crate::routing::InferResult) -> usize {
        result.picked().map(|(_, t, _)| t.binary_size()).sum()
    }

    fn encode(result: crate::routing::InferResult, id: String) -> Result<Self::Answer, ApiError> {
        Ok(tensors::encode(&result, id))
    }
}

type StreamResponses = Pin<
    Box<dyn tokio_stream::Stream<Item = Result<proto::ModelStreamInferResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl GrpcInferenceService for Api {
    async fn server_live(
        &self,
        _: Request<proto::ServerLiveRequest>,
    ) -> Result<Response<proto::ServerLiveResponse>, Status> {
        self.finish("ServerLive", Ok(proto::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<proto::ServerReadyRequest>,
    ) -> Result<Response<proto::ServerReadyResponse>, Status> {
        let ready = self.state.is_ready();
        self.finish("ServerReady", Ok(proto::ServerReadyResponse { ready }))
    }

    /// A model or version that exists but is not ready is `ready: false`, as is an unknown one:
    /// the probe's answer is the flag (HTTP answers 400 and 404).
    async fn model_ready(
        &self,
        request: Request<proto::ModelReadyRequest>,
    ) -> Result<Response<proto::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self
            .state
            .router
            .resolve(&r.name, version(&r.version))
            .is_ok();
        self.finish("ModelReady", Ok(proto::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<proto::ServerMetadataRequest>,
    ) -> Result<Response<proto::ServerMetadataResponse>, Status> {
        self.finish("ServerMetadata", Ok(service::server_metadata().into()))
    }

    async fn model_metadata(
        &self,
        request: Request<proto::ModelMetadataRequest>,
    ) -> Result<Response<proto::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let result =
            service::model_metadata(&self.state, &r.name, version(&r.version)).map(Into::into);
        self.finish("ModelMetadata", result)
    }

    async fn model_infer(
        &self,
        request: Request<proto::ModelInferRequest>,
    ) -> Result<Response<proto::ModelInferResponse>, Status> {
        // The message's reservation (in the extensions) is held until it is answered; a large
        // message was decoded off the runtime and is there too.
        let (metadata, extensions, message) = request.into_parts();
        let mut admitted = extensions.get::<Held>().and_then(Held::take);
        let size = admitted.as_ref().map_or(0, |a| a.reservation.bytes());
        let message = match &mut admitted {
            Some(a) => a.message(message),
            None => message,
        };
        let result = match self.authorize_inference(&metadata) {
            Ok(()) => infer(&self.state, message, size, &Metadata(metadata)).await,
            Err(e) => Err(e),
        };
        drop(admitted);
        self.finish("ModelInfer", result)
    }

    type ModelStreamInferStream = StreamResponses;

    /// Each request of the stream is one inference; answers come back as they finish (each
    /// carries its request's id), a failed one as its `error_message` without ending the stream.
    async fn model_stream_infer(
        &self,
        request: Request<Streaming<proto::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let (metadata, extensions, mut inbound) = request.into_parts();
        let held = extensions.get::<Held>().cloned().unwrap_or_default();
        if let Err(e) = self.authorize_inference(&metadata) {
            let code = code_name(e.grpc_code());
            self.state.metrics.record_grpc("ModelStreamInfer", code);
            return Err(e.into_status());
        }
        let keys = Arc::new(Metadata(metadata));
        let (tx, rx) = mpsc::channel(STREAM_IN_FLIGHT);
        let state = Arc::clone(&self.state);
        let slots = Arc::new(Semaphore::new(STREAM_IN_FLIGHT));
        tokio::spawn(async move {
            loop {
                let message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                // Each message's reservation goes with it, held until it is answered (and a
                // large one's message, decoded off the runtime).
                let mut reservation = held.take();
                let size = reservation.as_ref().map_or(0, |a| a.reservation.bytes());
                let message = match &mut reservation {
                    Some(a) => a.message(message),
                    None => message,
                };
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    break;
                };
                let (state, keys, tx) = (Arc::clone(&state), Arc::clone(&keys), tx.clone());
                tokio::spawn(async move {
                    let id = message.id.clone();
                    let answer = match infer(&state, message, size, &keys).await {
                        Ok(response) => {
                            state.metrics.record_grpc("ModelStreamInfer", "OK");
                            proto::ModelStreamInferResponse {
                                error_message: String::new(),
                                infer_response: Some(response),
                            }
                        }
                        Err(e) => {
                            state
                                .metrics
                                .record_grpc("ModelStreamInfer", code_name(e.grpc_code()));
                            proto::ModelStreamInferResponse {
                                error_message: e.to_string(),
                                infer_response: Some(proto::ModelInferResponse {
                                    id,
                                    ..Default::default()
                                }),
                            }
                        }
                    };
                    drop(reservation);
                    let _ = tx.send(Ok(answer)).await;
                    drop(slot);
                });
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn model_config(
        &self,
        request: Request<proto::ModelConfigRequest>,
    ) -> Result<Response<proto::ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let result = service::model_config(&self.state, &r.name, version(&r.version)).map(|c| {
            proto::ModelConfigResponse {
                config: Some(c.into()),
            }
        });
        self.finish("ModelConfig", result)
    }

    async fn model_statistics(
        &self,
        request: Request<proto::ModelStatisticsRequest>,
    ) -> Result<Response<proto::ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let model = (!r.name.is_empty()).then_some(r.name.as_str());
        let result = service::statistics(&self.state, model, version(&r.version)).map(Into::into);
        self.finish("ModelStatistics", result)
    }

    async fn repository_index(
        &self,
        request: Request<proto::RepositoryIndexRequest>,
    ) -> Result<Response<proto::RepositoryIndexResponse>, Status> {
        let result = match self.authorize(request.metadata()) {
            Err(e) => Err(e),
            Ok(()) => {
                let ready_only = request.get_ref().ready;
                let rows = self.state.repository.index(ready_only).await;
                Ok(proto::RepositoryIndexResponse {
                    models: rows
                        .into_iter()
                        .map(|row| proto::repository_index_response::ModelIndex {
                            name: row.name,
                            version: row.version.map(|v| v.to_string()).unwrap_or_default(),
                            state: row.state.as_str().to_string(),
                            reason: row.reason,
                        })
                        .collect(),
                })
            }
        };
        self.finish("RepositoryIndex", result)
    }

    /// Triton's load: `config` (a string parameter holding the configuration as JSON) and
    /// `file:<version>/<name>` (a bytes parameter holding the file) replace what is on disk.
    async fn repository_model_load(
        &self,
        request: Request<proto::RepositoryModelLoadRequest>,
    ) -> Result<Response<proto::RepositoryModelLoadResponse>, Status> {
        let result = async {
            self.authorize(request.metadata())?;
            // The files' reservation is held until the load has written them.
            let (_, _held, r) = request.into_parts();
            let with = load_override(&r.model_name, r.parameters)?;
            self.state
                .repository
                .load_model(&r.model_name, with)
                .await?;
            Ok(proto::RepositoryModelLoadResponse {})
        }
        .await;
        self.finish("RepositoryModelLoad", result)
    }

    async fn repository_model_unload(
        &self,
        request: Request<proto::RepositoryModelUnloadRequest>,
    ) -> Result<Response<proto::RepositoryModelUnloadResponse>, Status> {
        let result = async {
            self.authorize(request.metadata())?;
            let r = request.into_inner();
            self.state.repository.unload_model(&r.model_name).await?;
            Ok(proto::RepositoryModelUnloadResponse {})
        }
        .await;
        self.finish("RepositoryModelUnload", result)
    }
}

fn load_override(
    model: &str,
    parameters: std::collections::HashMap<String, proto::ModelRepositoryParameter>,
) -> Result<LoadOverride, ApiError> {
    use proto::model_repository_parameter::ParameterChoice as P;
    let mut with = LoadOverride::default();
    for (key, value) in parameters {
        match (key.as_str(), value.parameter_choice) {
            ("config", Some(P::StringParam(text))) => {
                let config = ModelConfig::from_json(&text, model)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                with.config = Some(config);
            }
            ("config", _) => {
                return Err(ApiError::BadRequest(
                    "parameter 'config' must be a string holding JSON".into(),
                ))
            }
            (file, choice) if file.starts_with("file:") => {
                let Some(P::BytesParam(content)) = choice else {
                    return Err(ApiError::BadRequest(format!(
                        "parameter '{key}' must be a bytes parameter holding the file"
                    )));
                };
                with.files
                    .push((file["file:".len()..].to_string(), content.to_vec()));
            }
            _ => {}
        }
    }
    Ok(with)
}

/// gRPC's name of a code, as a metric label.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
