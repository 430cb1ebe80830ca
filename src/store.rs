//! Object-store access, in one place: opening a store from a URL and the environment, and the
//! two operations replicas coordinate with, a versioned read and a conditional write. The
//! repository mirror (`repository::remote`), the shared deployment state (`rollout::shared`)
//! and the leases (`lease`) open their stores here.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};

/// Whether a repository setting names an object store rather than a directory.
pub fn is_url(repository: &str) -> bool {
    repository.contains("://")
}

/// A store client for `url` and the path it names, configured from the environment (`AWS_*`,
/// `GOOGLE_*`, `AZURE_*`, as each store's own tools read them) over our own connect and request
/// timeouts. Nothing is contacted yet.
pub fn open(url: &str, timeout: &str) -> Result<(Arc<dyn ObjectStore>, StorePath), String> {
    crate::tls::install_crypto_provider();
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let mut options: Vec<(String, String)> = vec![
        ("connect_timeout".into(), "10s".into()),
        ("timeout".into(), timeout.into()),
    ];
    options.extend(std::env::vars().map(|(k, v)| (k.to_ascii_lowercase(), v)));
    let (store, prefix) =
        object_store::parse_url_opts(&parsed, options).map_err(|e| e.to_string())?;
    Ok((Arc::from(store), prefix))
}

/// `f`'s result, or an error once `limit` has passed: a store's client may have no timeout of its
/// own (a local or in-memory store), and a replica's coordination must never wait forever.
pub async fn within<T>(
    limit: std::time::Duration,
    f: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| format!("the store did not answer within {limit:?}"))
}

/// A store's error on one line: an S3-style XML error body (`<Error><Code>NoSuchBucket</Code>
/// <Message>...`) is reduced to its code and message, so that the start's refusal reads as one
/// sentence in a log line instead of a pasted document.
pub fn one_line(reason: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = reason.find(&open)? + open.len();
        let end = start + reason[start..].find(&format!("</{name}>"))?;
        let text = reason[start..end].trim();
        let text = text
            .strip_prefix("<![CDATA[")
            .and_then(|t| t.strip_suffix("]]>"))
            .unwrap_or(text);
        Some(text.to_string())
    };
    let text = match (
        reason.find("<?xml").or_else(|| reason.find("<Error>")),
        tag("Code"),
    ) {
        (Some(at), Some(code)) => {
            let message = tag("Message").map(|m| format!(": {m}")).unwrap_or_default();
            format!("{}{code}{message}", &reason[..at])
        }
        _ => reason.to_string(),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An object's bytes and the version a conditional write must name; `None` when there is none.
/// Objects over `max_bytes` are refused: replicas coordinate through small ones.
pub async fn read_versioned(
    store: &dyn ObjectStore,
    path: &StorePath,
    max_bytes: u64,
) -> Result<Option<(Bytes, UpdateVersion)>, String> {
    let got = match store.get(path).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(format!("cannot read {path}: {e}")),
    };
    if got.meta.size > max_bytes {
        return Err(format!("{path} is over {max_bytes} bytes"));
    }
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    let bytes = got
        .bytes()
        .await
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    Ok(Some((bytes, version)))
}

/// Writes `body` if the store still holds `expected` (`None`: if it holds nothing). `Ok(None)`
/// when another writer came first.
pub async fn write_if(
    store: &dyn ObjectStore,
    path: &StorePath,
    body: Vec<u8>,
    expected: Option<UpdateVersion>,
) -> Result<Option<UpdateVersion>, String> {
    let options = PutOptions {
        mode: match expected {
            None => PutMode::Create,
            Some(v) => PutMode::Update(v),
        },
        ..Default::default()
    };
    match store.put_opts(path, PutPayload::from(body), options).await {
        Ok(result) => Ok(Some(UpdateVersion {
            e_tag: result.e_tag,
            version: result.version,
        })),
        Err(object_store::Error::Precondition { .. })
        | Err(object_store::Error::AlreadyExists { .. }) => Ok(None),
        Err(e) => Err(format!("cannot write {path}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_error_body_reads_as_one_line() {
        let raw = "Error performing GET http://h/b?list-type=2 in 119ms - Server returned non-2xx \
                   status code: 404 Not Found: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n    \
                   <Code>NoSuchBucket</Code>\n    <Message><![CDATA[The specified bucket does not \
                   exist]]></Message>\n    <BucketName>b</BucketName>\n</Error>";
        assert_eq!(
            one_line(raw),
            "Error performing GET http://h/b?list-type=2 in 119ms - Server returned non-2xx \
             status code: 404 Not Found: NoSuchBucket: The specified bucket does not exist"
        );
        assert_eq!(one_line("no answer\n  at all"), "no answer at all");
        assert_eq!(one_line("<Error>unclosed"), "<Error>unclosed");
    }
}
