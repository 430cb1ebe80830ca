//! Path and method dispatch for the V2 API, Triton's extensions, `/metrics` and the HTML pages
//! (`/` and each model's drift report): one `matchit`
//! table from path patterns to [`Route`]s, built once, then a method check per route.

use std::borrow::Cow;
use std::sync::OnceLock;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{
    deployment, empty_response, infer, json_response, models, monitoring, pages, repository,
    training, AppState,
};
use crate::service::{check_bearer, check_feedback, ApiError};

type Reply = Result<Response<Full<Bytes>>, ApiError>;

/// What a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    ServerMetadata,
    Live,
    Ready,
    Metrics,
    Deployments,
    AllStats,
    ModelMetadata,
    ModelReady,
    ModelConfig,
    ModelStats,
    Infer,
    Deployment,
    DeploymentAction,
    RepositoryIndex,
    RepositoryRescan,
    RepositoryLoad,
    RepositoryUnload,
    Feedback,
    Drift,
    Quality,
    /// The HTML status page at `/`.
    Status,
    /// A model's drift report as an HTML page.
    DriftReport,
    Train,
    TrainingJobs,
    TrainingJob,
}

impl Route {
    /// The endpoint group of `cairn_http_requests_total`.
    fn endpoint(self) -> &'static str {
        match self {
            Route::ServerMetadata => "server_metadata",
            Route::Live | Route::Ready => "health",
            Route::Metrics => "metrics",
            Route::Deployments | Route::Deployment | Route::DeploymentAction => "deployment",
            Route::AllStats | Route::ModelStats => "stats",
            Route::ModelMetadata => "model_metadata",
            Route::ModelReady => "model_ready",
            Route::ModelConfig => "model_config",
            Route::Infer => "infer",
            Route::RepositoryIndex
            | Route::RepositoryRescan
            | Route::RepositoryLoad
            | Route::RepositoryUnload => "repository",
            // The pages show monitoring (and status) data; a label of their own would need a
            // series of its own in `HTTP_ENDPOINTS`.
            Route::Feedback
            | Route::Drift
            | Route::Quality
            | Route::Status
            | Route::DriftReport => "monitoring",
            Route::Train | Route::TrainingJobs | Route::TrainingJob => "training",
        }
    }

    /// The methods the route answers, for 405.
    fn allowed(self) -> &'static str {
        match self {
            Route::Infer
            | Route::Feedback
            | Route::Train
            | Route::DeploymentAction
            | Route::RepositoryRescan
            | Route::RepositoryLoad
            | Route::RepositoryUnload => "POST",
            Route::RepositoryIndex => "POST or GET",
            _ => "GET",
        }
    }

    fn accepts(self, method: &Method) -> bool {
        match self.allowed() {
            "POST" => method == Method::POST,
            "POST or GET" => method == Method::POST || method == Method::GET,
            _ => method == Method::GET || method == Method::HEAD,
        }
    }

    /// Which token a route needs, when tokens are set: the admin token on management routes
    /// (and inference when so configured); the feedback or admin token on feedback, always,
    /// because ground truth steers canary decisions and retraining data.
    fn guard(self, protect_inference: bool) -> Guard {
        if self == Route::Feedback {
            return Guard::Feedback;
        }
        let admin = match self {
            Route::Deployments
            | Route::Deployment
            | Route::DeploymentAction
            | Route::RepositoryIndex
            | Route::RepositoryRescan
            | Route::RepositoryLoad
            | Route::RepositoryUnload
            | Route::Train
            | Route::TrainingJobs
            | Route::TrainingJob => true,
            Route::Infer => protect_inference,
            _ => false,
        };
        if admin {
            Guard::Admin
        } else {
            Guard::Open
        }
    }
}

/// What a route needs in its `Authorization` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    Open,
    /// The admin token, when one is set.
    Admin,
    /// The feedback token or the admin token, when either is set.
    Feedback,
}

/// Every path the server answers, versioned forms included.
fn table() -> &'static matchit::Router<Route> {
    static TABLE: OnceLock<matchit::Router<Route>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = matchit::Router::new();
        let mut add = |path: &str, route: Route| {
            t.insert(path, route)
                .expect("route patterns do not conflict");
        };
        add("/", Route::Status);
        add("/v2", Route::ServerMetadata);
        add("/v2/health/live", Route::Live);
        add("/v2/health/ready", Route::Ready);
        add("/metrics", Route::Metrics);
        add("/v2/deployments", Route::Deployments);
        add("/v2/models/stats", Route::AllStats);
        for (suffix, route) in [
            ("", Route::ModelMetadata),
            ("/ready", Route::ModelReady),
            ("/config", Route::ModelConfig),
            ("/stats", Route::ModelStats),
            ("/infer", Route::Infer),
            ("/drift", Route::Drift),
            ("/quality", Route::Quality),
            ("/drift/report", Route::DriftReport),
        ] {
            add(&format!("/v2/models/{{model}}{suffix}"), route);
            add(
                &format!("/v2/models/{{model}}/versions/{{version}}{suffix}"),
                route,
            );
        }
        add("/v2/models/{model}/feedback", Route::Feedback);
        add("/v2/models/{model}/train", Route::Train);
        add("/v2/training/jobs", Route::TrainingJobs);
        add("/v2/training/jobs/{action}", Route::TrainingJob);
        add("/v2/models/{model}/deployment", Route::Deployment);
        add(
            "/v2/models/{model}/deployment/{action}",
            Route::DeploymentAction,
        );
        add("/v2/repository/index", Route::RepositoryIndex);
        add("/v2/repository/rescan", Route::RepositoryRescan);
        add("/v2/repository/models/{model}/load", Route::RepositoryLoad);
        add(
            "/v2/repository/models/{model}/unload",
            Route::RepositoryUnload,
        );
        t
    })
}

/// Routes one request. Returns a fixed endpoint label for the HTTP metrics with the outcome.
pub async fn dispatch(state: &AppState, req: Request<Incoming>) -> (&'static str, Reply) {
    let method = req.method().clone();
    let raw = req.uri().path();
    // One trailing slash is tolerated, as clients add them.
    let lookup = match raw.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed,
        _ => raw,
    };
    let Ok(found) = table().at(lookup) else {
        return ("unknown", Err(no_endpoint(&method, raw)));
    };
    let route = *found.value;
    let param = |name: &str| found.params.get(name).map(decode);
    let model = param("model").unwrap_or_default().into_owned();
    let version = param("version").map(Cow::into_owned);
    let action = param("action").map(Cow::into_owned);
    let endpoint = route.endpoint();
    if !route.accepts(&method) {
        return (
            endpoint,
            Err(ApiError::MethodNotAllowed {
                method: method.to_string(),
                path: raw.to_string(),
                allowed: route.allowed(),
            }),
        );
    }
    let authorized = match route.guard(state.config.protect_inference) {
        Guard::Open => Ok(()),
        Guard::Admin => authorize(state, req.headers()),
        Guard::Feedback => authorize_feedback(state, req.headers()),
    };
    if let Err(e) = authorized {
        return (endpoint, Err(e));
    }
    let version = version.as_deref();
    let reply = match route {
        Route::ServerMetadata => models::server_metadata(state),
        Route::Live => Ok(empty_response(StatusCode::OK)),
        Route::Ready => readiness(state),
        Route::Metrics => Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(state.metrics.render())))
            .expect("static headers are valid")),
        Route::Deployments => deployment::list(state),
        Route::AllStats => models::stats(state, None, None),
        Route::ModelMetadata => models::metadata(state, &model, version),
        Route::ModelReady => models::ready(state, &model, version),
        Route::ModelConfig => models::config(state, &model, version),
        Route::ModelStats => models::stats(state, Some(&model), version),
        Route::Infer => infer::infer(state, &model, version, req).await,
        Route::Deployment => deployment::get(state, &model),
        Route::DeploymentAction => {
            let action = action.unwrap_or_default();
            deployment::act(state, &model, &action, req).await
        }
        Route::RepositoryIndex => repository::index(state, req).await,
        Route::RepositoryRescan => {
            let acted = state.repository.rescan().await;
            Ok(json_response(&serde_json::json!({ "changed": acted })))
        }
        Route::RepositoryLoad => repository::load(state, &model, req).await,
        Route::RepositoryUnload => repository::unload(state, &model, req).await,
        Route::Feedback => monitoring::feedback(state, &model, req).await,
        Route::Drift => monitoring::drift(state, &model, version, req.uri().query()).await,
        Route::Quality => monitoring::quality(state, &model, version),
        // The page is public; what it shows of deployments needs the admin token, as
        // `GET /v2/deployments` does.
        Route::Status => pages::status(state, authorize(state, req.headers()).is_ok()),
        Route::DriftReport => pages::drift_report(state, &model, version).await,
        Route::Train => training::start(state, &model, req).await,
        Route::TrainingJobs => training::list(state),
        Route::TrainingJob => training::get(state, &action.unwrap_or_default()),
    };
    (endpoint, reply)
}

fn readiness(state: &AppState) -> Reply {
    if state.is_ready() {
        Ok(empty_response(StatusCode::OK))
    } else if state.stopping.load(std::sync::atomic::Ordering::Acquire) {
        Err(ApiError::Unready(
            "the server is not ready: shutting down".into(),
        ))
    } else {
        Err(ApiError::Unready(
            "the server is not ready: loading the model repository".into(),
        ))
    }
}

/// Management endpoints need the admin bearer token when one is configured: none given is 401,
/// a wrong one 403.
fn authorize(state: &AppState, headers: &http::HeaderMap) -> Result<(), ApiError> {
    check_bearer(
        state,
        headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
    )
}

/// Feedback needs the feedback token or the admin token when either is set.
fn authorize_feedback(state: &AppState, headers: &http::HeaderMap) -> Result<(), ApiError> {
    check_feedback(
        state,
        headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
    )
}

fn no_endpoint(method: &Method, path: &str) -> ApiError {
    ApiError::NoEndpoint {
        method: method.to_string(),
        path: path.to_string(),
    }
}

/// A path parameter with its `%XX` escapes decoded (clients quote model names).
fn decode(segment: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_routes() {
        let cases = [
            ("/v2", Route::ServerMetadata),
            ("/v2/models/stats", Route::AllStats),
            ("/v2/models/iris", Route::ModelMetadata),
            ("/v2/models/iris/versions/2/infer", Route::Infer),
            ("/v2/models/my%20model/ready", Route::ModelReady),
            ("/v2/models/iris/deployment/canary", Route::DeploymentAction),
            ("/v2/repository/models/iris/unload", Route::RepositoryUnload),
            ("/", Route::Status),
            ("/v2/models/iris/drift/report", Route::DriftReport),
            (
                "/v2/models/iris/versions/2/drift/report",
                Route::DriftReport,
            ),
        ];
        for (path, route) in cases {
            assert_eq!(*table().at(path).unwrap().value, route, "{path}");
        }
        for path in [
            "/v2/models/iris/bogus",
            "/v2/models",
            "/v3",
            "/v2/models/iris/versions/2/x",
            "/v2/models/iris/drift/x",
            "/index.html",
        ] {
            assert!(table().at(path).is_err(), "{path}");
        }
        let found = table()
            .at("/v2/models/my%20model/versions/3/config")
            .unwrap();
        assert_eq!(decode(found.params.get("model").unwrap()), "my model");
        assert_eq!(found.params.get("version"), Some("3"));
    }

    #[test]
    fn page_routes_count_under_a_known_endpoint() {
        for route in [Route::Status, Route::DriftReport] {
            assert!(
                crate::metrics::HTTP_ENDPOINTS[..crate::metrics::HTTP_ENDPOINTS.len() - 1]
                    .contains(&route.endpoint())
            );
            assert!(route.accepts(&Method::GET) && route.accepts(&Method::HEAD));
            assert_eq!(route.guard(true), Guard::Open);
        }
    }

    #[test]
    fn feedback_has_its_own_guard_whatever_protects_inference() {
        for protect in [false, true] {
            assert_eq!(Route::Feedback.guard(protect), Guard::Feedback);
            assert_eq!(Route::Train.guard(protect), Guard::Admin);
        }
        assert_eq!(Route::Infer.guard(false), Guard::Open);
        assert_eq!(Route::Infer.guard(true), Guard::Admin);
    }

    #[test]
    fn decodes_escapes() {
        assert_eq!(decode("my%20model"), "my model");
        assert_eq!(decode("a%2"), "a%2");
        assert_eq!(decode("plain"), "plain");
        assert_eq!(decode("%41%"), "A%");
    }
}
