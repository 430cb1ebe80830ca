//! The service layer's one inference path, called in process with a codec of the test's own
//! (as HTTP and gRPC call it with theirs): what it adds to every front end, whatever the wire.

use std::sync::Mutex;
use std::thread::ThreadId;

use bytes::Bytes;
use cairn::offload::INLINE_LIMIT;
use cairn::request::InferRequest;
use cairn::routing::InferResult;
use cairn::service::{self, ApiError, ErrorCode, InferCodec};

use crate::common::{Repo, TestServer};

/// The threads the probe decoded and encoded on, in order.
static THREADS: Mutex<Vec<(&str, ThreadId)>> = Mutex::new(Vec::new());

/// V2 JSON in, the request id and output names out; the answer's size is what the test sets
/// (`SIZE`), so that it takes the same road as the payload.
struct Probe;

impl InferCodec for Probe {
    type Payload = Vec<u8>;
    type Answer = (String, Vec<String>);

    fn decode(json: Self::Payload) -> Result<InferRequest, ApiError> {
        THREADS
            .lock()
            .unwrap()
            .push(("decode", std::thread::current().id()));
        Ok(cairn::protocol::decode_request(Bytes::from(json), None)?)
    }

    /// Called on the runtime's thread, where the test set the size it wants.
    fn answer_size(_: &InferResult) -> usize {
        SIZE.with(|s| *s.borrow())
    }

    fn encode(result: InferResult, id: String) -> Result<Self::Answer, ApiError> {
        THREADS
            .lock()
            .unwrap()
            .push(("encode", std::thread::current().id()));
        let names = result
            .picked()
            .map(|(name, _, _)| name.to_string())
            .collect();
        Ok((id, names))
    }
}

thread_local! {
    static SIZE: std::cell::RefCell<usize> = const { std::cell::RefCell::new(0) };
}

fn request(id: Option<&str>) -> Vec<u8> {
    let a: Vec<i32> = (0..16).collect();
    let mut body = serde_json::json!({
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": a},
        ]
    });
    if let Some(id) = id {
        body["id"] = id.into();
    }
    serde_json::to_vec(&body).unwrap()
}

/// On a one-thread runtime, a small payload is decoded and its answer encoded on the runtime's
/// thread; a large one on another (the blocking pool), both ways. Every request gets an id:
/// the caller's, else a new one; an unknown model is the service's `NotFound`, whatever the
/// front end makes of it.
#[tokio::test(flavor = "current_thread")]
async fn one_inference_path_for_every_codec() {
    let s = TestServer::start(Repo::with(&["simple"])).await;
    let state = &s.server.as_ref().unwrap().state;
    let keys = http::HeaderMap::new();
    let runtime = std::thread::current().id();

    for (size, inline) in [(100, true), (INLINE_LIMIT + 1, false)] {
        THREADS.lock().unwrap().clear();
        SIZE.with(|s| *s.borrow_mut() = size);
        let (id, names) =
            service::infer::<Probe>(state, "simple", None, &keys, request(Some("mine")), size)
                .await
                .unwrap();
        assert_eq!(id, "mine");
        assert_eq!(names, ["OUTPUT0", "OUTPUT1"]);
        let threads = THREADS.lock().unwrap().clone();
        assert_eq!(threads.len(), 2, "{threads:?}");
        for (side, thread) in threads {
            assert_eq!(thread == runtime, inline, "{side} of a {size}-byte payload");
        }
    }

    let (id, _) = service::infer::<Probe>(state, "simple", None, &keys, request(None), 0)
        .await
        .unwrap();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);

    let err = service::infer::<Probe>(state, "nope", None, &keys, request(None), 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound, "{err}");
}
