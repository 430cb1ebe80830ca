//! Property tests of everything that parses what a client or an operator sends: the V2 request
//! decoders (JSON, binary extension, raw binary), the feedback decoder and the configuration
//! parsers. Arbitrary input never panics, and the decoders never allocate more than a small
//! multiple of the body: a counting allocator measures the peak bytes each decode holds on its
//! thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use proptest::prelude::*;

use cairn::config::{ModelConfig, ServerConfig, ServerSettings};
use cairn::protocol::{decode_feedback, decode_request};
use cairn::tensor::DataType;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// thread-local cells that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns the most bytes it held at once beyond what was held before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - start).max(0) as usize)
}

/// The decoders' memory bound: decoded tensors take at most a few bytes per body byte (an FP64
/// element is 8 bytes for 2 characters of JSON, a BYTES element a 32-byte handle for 3), plus
/// a constant for the parser's own state.
fn bound(body_len: usize) -> usize {
    16 * body_len + (256 << 10)
}

const DATATYPES: &[&str] = &[
    "BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64", "BYTES",
    "FLOAT", "",
];

fn dim() -> impl Strategy<Value = i64> {
    prop_oneof![
        0i64..4,
        Just(-1),
        Just(1 << 20),
        Just(1 << 32),
        Just(1_099_511_627_776),
        Just(i64::MAX),
        any::<i64>(),
    ]
}

fn element() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1".to_string()),
        Just("-1.5e3".to_string()),
        Just("true".to_string()),
        Just("\"a\"".to_string()),
        Just("\"\\u00e9\\\"\"".to_string()),
        Just("null".to_string()),
        Just("[1,[2]]".to_string()),
        Just("{}".to_string()),
        Just("1e400".to_string()),
        Just("18446744073709551616".to_string()),
    ]
}

/// Mostly well-formed V2 JSON inputs, with hostile shapes, datatypes, data and parameters.
fn json_input() -> impl Strategy<Value = String> {
    (
        "[a-z]{0,3}",
        prop::collection::vec(dim(), 0..5),
        prop::sample::select(DATATYPES),
        prop::collection::vec(element(), 0..64),
        prop::option::of(0u64..1 << 40),
        any::<bool>(),
    )
        .prop_map(|(name, shape, datatype, data, binary_size, nested)| {
            let shape: Vec<String> = shape.iter().map(i64::to_string).collect();
            let data = if nested {
                format!("[[{}]]", data.join(","))
            } else {
                format!("[{}]", data.join(","))
            };
            match binary_size {
                Some(size) => format!(
                    r#"{{"name":"{name}","shape":[{}],"datatype":"{datatype}","parameters":{{"binary_data_size":{size}}}}}"#,
                    shape.join(",")
                ),
                None => format!(
                    r#"{{"name":"{name}","shape":[{}],"datatype":"{datatype}","data":{data}}}"#,
                    shape.join(",")
                ),
            }
        })
}

fn json_request() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(json_input(), 0..4),
        prop::option::of(prop_oneof![
            Just(r#"{"binary_data_output":true,"timeout":5}"#.to_string()),
            Just(r#"{"binary_data_output":"yes"}"#.to_string()),
            Just(r#"{"x":[1,2,3]}"#.to_string()),
            "[a-z:0-9\",{}]{0,40}",
        ]),
        prop::option::of(prop_oneof![
            Just(r#"[{"name":"o","parameters":{"binary_data":true}}]"#.to_string()),
            Just(r#"[{"name":"o"},{"name":"o"}]"#.to_string()),
            Just(r#"[{"name":"o","parameters":{"classification":2}}]"#.to_string()),
        ]),
    )
        .prop_map(|(inputs, params, outputs)| {
            let mut body = format!(r#"{{"id":"x","inputs":[{}]"#, inputs.join(","));
            if let Some(p) = params {
                body.push_str(&format!(r#","parameters":{p}"#));
            }
            if let Some(o) = outputs {
                body.push_str(&format!(r#","outputs":{o}"#));
            }
            body.push('}');
            body
        })
}

fn check_decode(body: Vec<u8>, header_len: Option<usize>) {
    let len = body.len();
    let (_, peak) = peak_during(|| {
        let _ = decode_request(Bytes::from(body), header_len);
    });
    assert!(
        peak <= bound(len),
        "decoding {len} bytes held {peak} bytes (bound {})",
        bound(len)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn json_requests_never_panic_and_stay_bounded(body in json_request()) {
        check_decode(body.into_bytes(), None);
    }

    #[test]
    fn binary_requests_never_panic_and_stay_bounded(
        header in json_request(),
        tail in prop::collection::vec(any::<u8>(), 0..512),
        cut in any::<usize>(),
    ) {
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&tail);
        let header_len = Some(if cut % 4 == 0 { cut % (body.len() + 8) } else { header.len() });
        check_decode(body, header_len);
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..2048), raw in any::<bool>()) {
        check_decode(body, raw.then_some(0));
    }

    /// The generated warm-up sample never holds more than its limit, whatever dims a config pins.
    #[test]
    fn warm_up_samples_respect_their_limit(
        dims in prop::collection::vec(dim(), 0..5),
        dtype in prop::sample::select(&DataType::ALL[..]),
        max in 0usize..1 << 20,
    ) {
        let (result, peak) = peak_during(|| cairn::model::sample_tensor("x", dtype, &dims, max));
        if let Ok(t) = result {
            prop_assert!(t.binary_size() <= max);
        }
        prop_assert!(peak <= 2 * max + (64 << 10), "{peak} > 2 × {max}");
    }
}

/// Feedback bodies, mostly well-formed, with hostile fields, values and shapes.
fn feedback_body() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        element(),
        Just("1e12".to_string()),
        Just("-0.5".to_string()),
        Just("4294967296".to_string()),
        Just(format!("\"{}\"", "x".repeat(300))),
        Just(format!("\"{}\"", "y".repeat(1100))),
    ];
    let field = prop::sample::select(&["id", "row", "label", "target", "time", "other"][..]);
    let item = prop::collection::vec((field, value), 0..6).prop_map(|fields| {
        let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", inner.join(","))
    });
    (prop::collection::vec(item, 0..40), any::<bool>(), 0usize..4).prop_map(
        |(items, wrapped, cut)| {
            let list = format!("[{}]", items.join(","));
            let body = if wrapped {
                format!(r#"{{"feedback":{list}}}"#)
            } else {
                list
            };
            // Sometimes cut short.
            let keep = body.len() - (cut * body.len() / 8).min(body.len());
            body[..keep].to_string()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Feedback decodes within the same bound as requests, and what it accepts is within the
    /// documented limits.
    #[test]
    fn feedback_bodies_never_panic_and_stay_bounded(body in feedback_body()) {
        let len = body.len();
        let now = 1_796_166_458_000_000;
        let (result, peak) = peak_during(|| decode_feedback(body.as_bytes(), now));
        prop_assert!(peak <= bound(len), "decoding {len} bytes held {peak} bytes");
        for item in result.unwrap_or_default() {
            prop_assert!(!item.id.is_empty() && item.id.len() <= cairn::request::MAX_ID_BYTES);
            prop_assert!(item.label.as_ref().is_none_or(|l| l.len() <= cairn::protocol::MAX_LABEL_BYTES));
            prop_assert!(item.label.is_some() || item.target.is_some());
            prop_assert!(item.time_us.is_none_or(|t| (0..=now + 86_400_000_000).contains(&t)));
        }
    }
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        Just("4294967296".to_string()),
        Just("1000000000".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1.5".to_string()),
        Just("true".to_string()),
        Just("\"x\"".to_string()),
        Just("[]".to_string()),
        Just("[1, -1, 1099511627776]".to_string()),
        Just("[\"sample.json\"]".to_string()),
        Just("{ latest = { num_versions = 0 } }".to_string()),
        Just("{ specific = { versions = [0] } }".to_string()),
    ]
}

const MODEL_KEYS: &[&str] = &[
    "name",
    "backend",
    "max_batch_size",
    "instances",
    "default_model_filename",
    "version_policy",
    "bogus",
];

const SECTION_KEYS: &[(&str, &[&str])] = &[
    (
        "dynamic_batching",
        &[
            "preferred_batch_sizes",
            "max_queue_delay_us",
            "max_queue_size",
            "default_timeout_us",
        ],
    ),
    ("queue", &["max_queue_size", "default_timeout_us"]),
    ("warmup", &["requests", "count"]),
    (
        "rollout",
        &[
            "canary_weight",
            "min_requests",
            "max_p99_ratio",
            "sticky_header",
            "on_new_version",
        ],
    ),
    ("input", &["name", "datatype", "dims"]),
];

fn model_config_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((prop::sample::select(MODEL_KEYS), toml_value()), 0..6),
        prop::collection::vec(
            (
                prop::sample::select(SECTION_KEYS),
                prop::collection::vec((0usize..5, toml_value()), 0..5),
            ),
            0..3,
        ),
    )
        .prop_map(|(top, sections)| {
            let mut text = String::new();
            for (k, v) in top {
                text.push_str(&format!("{k} = {v}\n"));
            }
            for ((section, keys), entries) in sections {
                let header = if section == "input" {
                    "[[input]]".to_string()
                } else {
                    format!("[{section}]")
                };
                text.push_str(&format!("{header}\n"));
                for (i, v) in entries {
                    let key = keys[i % keys.len()];
                    text.push_str(&format!("{key} = {v}\n"));
                }
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever a config.toml says, parsing and validating it never panics, and one that
    /// passes stays within the limits every load relies on.
    #[test]
    fn model_configs_never_panic_and_accepted_ones_are_bounded(text in model_config_text()) {
        if let Ok(config) = toml::from_str::<ModelConfig>(&text) {
            if config.validate("m").is_ok() {
                prop_assert!(config.instances.get() <= cairn::config::model::MAX_INSTANCES);
                prop_assert!(config.max_batch_size <= cairn::config::model::MAX_BATCH_SIZE_LIMIT);
                if let Some(w) = &config.warmup {
                    prop_assert!(w.count.get() <= cairn::config::model::MAX_WARMUP_COUNT);
                }
                let json = serde_json::to_string(&config).unwrap();
                prop_assert_eq!(ModelConfig::from_json(&json, "m").unwrap(), config);
            }
        }
    }

    #[test]
    fn json_model_configs_never_panic(text in "[\\[\\]{}a-z_:,\" 0-9-]{0,80}") {
        let _ = ModelConfig::from_json(&text, "m");
    }

    #[test]
    fn server_settings_never_panic(
        entries in prop::collection::vec(
            (prop::sample::select(&[
                "max_body_bytes", "max_connections", "max_buffered_body_bytes",
                "header_read_timeout_s", "keep_alive_timeout_s", "body_read_timeout_s",
                "model_load_memory_bytes", "model_load_timeout_s", "http_threads",
                "shutdown_timeout_s", "protect_inference", "listen", "unknown",
            ][..]), toml_value()),
            0..6,
        )
    ) {
        let text: String = entries.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        if let Ok(settings) = toml::from_str::<ServerSettings>(&text) {
            if let Ok(c) = ServerConfig::from_settings(settings, std::path::Path::new("s.toml"), None) {
                prop_assert!(c.connections.max_buffered_body_bytes >= c.max_body_bytes);
                prop_assert!(c.connections.max_connections >= 1);
            }
        }
    }
}
