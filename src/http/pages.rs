//! Pages for people, in a browser: the status page at `/` and the live drift report of a model.
//!
//! Both are self-contained HTML (inline CSS and SVG, no script), drawn by
//! `cairn_monitor::html`, so they work offline and with JavaScript off. A strict
//! `Content-Security-Policy` makes the browser enforce it: nothing is fetched and no script runs,
//! whatever a report holds.
//!
//! The status page shows what the public endpoints already show (models, versions, readiness
//! and why a version is not ready); deployments are management data, behind the admin token
//! like `GET /v2/deployments`, so without it the page says where to find them instead.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use cairn_monitor::html;
use cairn_monitor::quality::QualityWindow;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use super::AppState;
use crate::monitoring::{ModelMonitor, PublishedReport};
use crate::rollout::DeploymentView;
use crate::routing::RouteError;
use crate::service::ApiError;

type Reply = Result<Response<Full<Bytes>>, ApiError>;

/// Reports larger than this (serialized) are drawn on the blocking pool: a page is linear in its
/// report, and drawing one of thousands of features would hold a runtime thread. Categorical
/// values are bounded, so a report's size follows its features; 32 KiB is some 40 numeric ones.
const INLINE_REPORT_BYTES: usize = 32 << 10;

/// The browser may load nothing and run nothing: only the page's own inline style.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn html_response(body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        // Live state: a cached copy would show a stale window as current.
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid")
}

/// A path segment for a link: every byte but letters and digits percent-encoded.
fn segment(name: &str) -> String {
    utf8_percent_encode(name, NON_ALPHANUMERIC).to_string()
}

/// `GET /`: every model the server routes, its versions and their state, its deployment (with
/// the admin token, or when none is configured) and a link to its drift report if monitored.
pub fn status(state: &AppState, authorized: bool) -> Reply {
    let table = state.router.snapshot();
    let mut names: Vec<&String> = table.models.keys().collect();
    names.sort();
    let deployments: Option<HashMap<String, DeploymentView>> = authorized.then(|| {
        state
            .rollout
            .views()
            .into_iter()
            .map(|v| (v.model.clone(), v))
            .collect()
    });
    let server_state = if state.is_ready() {
        "ready"
    } else if state.stopping.load(std::sync::atomic::Ordering::Acquire) {
        "shutting down"
    } else {
        "loading the model repository"
    };
    let mut body = String::new();
    body.push_str("<section><h2>Models</h2>");
    if names.is_empty() {
        body.push_str("<p class=\"muted\">No model is loaded.</p>");
    } else {
        body.push_str(
            "<table><tr><th>Model</th><th>Versions and state</th><th>Deployment</th>\
             <th>Monitoring</th></tr>",
        );
        for name in names {
            let Some(route) = table.models.get(name) else {
                continue;
            };
            let link = segment(name);
            body.push_str(&format!(
                "<tr><td class=\"name\"><a href=\"/v2/models/{link}\">{}</a></td><td>",
                html::escape(name)
            ));
            version_list(&mut body, route);
            body.push_str("</td><td>");
            match &deployments {
                Some(views) => match views.get(name.as_str()) {
                    Some(view) => deployment_cell(&mut body, view),
                    None => body.push_str("<span class=\"muted\">none</span>"),
                },
                None => body.push_str(
                    "<span class=\"muted\">needs the admin token \
                     (<code>GET /v2/models/{m}/deployment</code>)</span>",
                ),
            }
            body.push_str("</td><td>");
            if state.monitors.get(name).is_some() {
                body.push_str(&format!(
                    "<a href=\"/v2/models/{link}/drift/report\">drift report</a> \
                     <span class=\"muted\">(JSON: <a href=\"/v2/models/{link}/drift\">drift</a>, \
                     <a href=\"/v2/models/{link}/quality\">quality</a>)</span>"
                ));
            } else {
                body.push_str("<span class=\"muted\">off</span>");
            }
            body.push_str("</td></tr>");
        }
        body.push_str("</table>");
    }
    body.push_str("</section>");
    if authorized {
        training_section(&mut body, state);
    }
    body.push_str(
        "<section><h2>Endpoints</h2><p>\
         <a href=\"/v2\">server metadata</a> · <a href=\"/v2/health/ready\">readiness</a> · \
         <a href=\"/v2/models/stats\">statistics</a> · <a href=\"/metrics\">metrics</a> · \
         <a href=\"/v2/deployments\">deployments</a> (admin)</p></section>\n",
    );
    let subtitle = format!(
        "{} {} · {server_state}",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION")
    );
    Ok(html_response(html::page(
        "Model server status",
        &subtitle,
        &body,
    )))
}

/// Training jobs (newest first) and each model's retraining state; shown with the admin token,
/// as `GET /v2/training/jobs` is.
fn training_section(out: &mut String, state: &AppState) {
    let jobs = state.training.list();
    let retrain = state.retrainer.states();
    if jobs.is_empty() && retrain.is_empty() {
        return;
    }
    out.push_str("<section><h2>Training</h2>");
    if !retrain.is_empty() {
        out.push_str(
            "<table><tr><th>Model</th><th>Drift streak</th><th>Labelled rows</th>\
             <th>Started (24 h)</th><th>Last decision</th></tr>",
        );
        for (model, r) in &retrain {
            out.push_str(&format!(
                "<tr><td class=\"name\">{}</td><td>{} of {}</td><td>{} of {}</td><td>{} of {}</td><td>{}</td></tr>",
                html::escape(model),
                r.consecutive,
                r.needed,
                r.labelled_since,
                r.min_labelled_rows,
                r.started_last_24h,
                r.max_per_day,
                html::escape(&match &r.lease {
                    Some(lease) => format!(
                        "{} · lease {lease}",
                        r.last_decision.as_deref().unwrap_or("none yet")
                    ),
                    None => r.last_decision.clone().unwrap_or_else(|| "none yet".into()),
                }),
            ));
        }
        out.push_str("</table>");
    }
    if !jobs.is_empty() {
        out.push_str(
            "<table><tr><th>Job</th><th>Model</th><th>Trigger</th><th>State</th>\
             <th>Progress</th><th>Test</th><th>Gate</th><th>Version</th></tr>",
        );
        for j in jobs.iter().rev().take(20) {
            let test = j
                .test
                .as_ref()
                .and_then(|t| {
                    t.accuracy
                        .map(|a| format!("accuracy {a:.4}"))
                        .or(t.rmse.map(|r| format!("rmse {r:.4}")))
                })
                .unwrap_or_default();
            let gate = j
                .gate
                .as_ref()
                .map(|g| g.reason.clone())
                .or(j.error.clone())
                .unwrap_or_default();
            out.push_str(&format!(
                "<tr><td><a href=\"/v2/training/jobs/{id}\">{id}</a></td><td>{}</td><td>{:?}</td>\
                 <td>{:?}</td><td>{} · trials {}/{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html::escape(&j.model),
                j.trigger,
                j.state,
                html::escape(&j.progress.stage),
                j.progress.trials_done,
                j.progress.trials,
                html::escape(&test),
                html::escape(&gate),
                j.version.map_or(String::new(), |v| v.to_string()),
                id = html::escape(&j.id),
            ));
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
}

/// Each version with its state: ready, or unavailable with the reason.
fn version_list(out: &mut String, route: &crate::routing::ModelRoute) {
    let mut states: BTreeMap<u64, Option<&str>> = BTreeMap::new();
    for v in route.versions.keys() {
        states.insert(*v, None);
    }
    for (v, reason) in &route.failed {
        states.entry(*v).or_insert(Some(reason));
    }
    if states.is_empty() {
        let reason = route.reason.as_deref().unwrap_or("no version is loaded");
        out.push_str(&format!(
            "<span class=\"badge bad\">UNAVAILABLE</span> {}",
            html::escape(reason)
        ));
        return;
    }
    out.push_str("<ul style=\"margin:0;padding-left:18px\">");
    for (v, reason) in states {
        match reason {
            None => out.push_str(&format!(
                "<li>version {v} <span class=\"badge good\">READY</span></li>"
            )),
            Some(reason) => out.push_str(&format!(
                "<li>version {v} <span class=\"badge bad\">UNAVAILABLE</span> {}</li>",
                html::escape(reason)
            )),
        }
    }
    out.push_str("</ul>");
    if let Some(reason) = &route.reason {
        out.push_str(&format!("<p class=\"muted\">{}</p>", html::escape(reason)));
    }
}

/// Stable version, and the candidate with its mode, weight and what its trial waits for.
fn deployment_cell(out: &mut String, view: &DeploymentView) {
    match view.stable {
        Some(v) => out.push_str(&format!(
            "stable: version {v}{}",
            if view.stable_pinned {
                " (pinned)"
            } else {
                " (highest ready)"
            }
        )),
        None => out.push_str("stable: none"),
    }
    match &view.candidate {
        Some(c) => {
            let weight = c
                .weight
                .map(|w| format!(", weight {:.1}%", w * 100.0))
                .unwrap_or_default();
            out.push_str(&format!(
                "<br>candidate: version {} ({}{weight})<br><span class=\"muted\">{}</span>",
                c.version,
                html::escape(c.mode),
                html::escape(&c.trial.status)
            ));
        }
        None => out.push_str("<br><span class=\"muted\">no candidate</span>"),
    }
}

/// `GET /v2/models/{m}[/versions/{v}]/drift/report`: the latest closed window's report of the
/// newest version that has one (or of the version named), with that version's live quality.
/// 404 when the model is not monitored; a page saying so when no window has closed yet.
pub async fn drift_report(state: &AppState, model: &str, version: Option<&str>) -> Reply {
    let monitor = super::monitoring::monitor_of(state, model)?;
    let wanted = super::monitoring::parse_version(model, version)?;
    let reports = monitor.drift(None, 1);
    if let Some(v) = wanted {
        let known = reports.contains_key(&v)
            || monitor.baselines().contains_key(&v)
            || state
                .router
                .snapshot()
                .models
                .get(model)
                .is_some_and(|r| r.versions.contains_key(&v) || r.failed.contains_key(&v));
        if !known {
            return Err(RouteError::UnknownVersion {
                model: model.to_string(),
                version: v.to_string(),
            }
            .into());
        }
    }
    let latest = |v: &u64| reports.get(v).and_then(|list| list.last()).cloned();
    let (shown, report) = match wanted {
        Some(v) => (Some(v), latest(&v)),
        None => match reports
            .iter()
            .rev()
            .find_map(|(v, list)| list.last().map(|r| (*v, r.clone())))
        {
            Some((v, r)) => (Some(v), Some(r)),
            None => (monitor.baselines().keys().next_back().copied(), None),
        },
    };
    let quality = shown
        .map(|v| quality_windows(&monitor, v))
        .unwrap_or_default();
    let nav = navigation(&monitor, model, shown, &reports);
    let title = match shown {
        Some(v) => format!("Drift report: {model}, version {v}"),
        None => format!("Drift report: {model}"),
    };
    let large = report
        .as_ref()
        .is_some_and(|r| r.bytes > INLINE_REPORT_BYTES);
    let render = move || {
        let view = report
            .as_ref()
            .map(|r| html::ReportView::from(r.report.as_ref()));
        let subtitle = view
            .and_then(|v| v.window)
            .map(html::window_line)
            .unwrap_or_default();
        let body = nav + &html::drift_body(view, &quality);
        html::page(&title, &subtitle, &body)
    };
    let page = if large {
        state.offload.run(render).await?
    } else {
        render()
    };
    Ok(html_response(page))
}

/// A version's quality windows, oldest first, the one still filling last and marked so.
fn quality_windows(monitor: &ModelMonitor, version: u64) -> Vec<QualityWindow> {
    let Some(q) = monitor.quality(Some(version)).remove(&version) else {
        return Vec::new();
    };
    let mut windows: Vec<QualityWindow> = q.windows.into_iter().collect();
    if let Some(mut current) = q.current {
        current.filling = true;
        windows.push(current);
    }
    windows
}

/// Links back to the status page, to the other versions' reports and to the JSON, and where
/// the version's baseline came from.
fn navigation(
    monitor: &ModelMonitor,
    model: &str,
    shown: Option<u64>,
    reports: &BTreeMap<u64, Vec<PublishedReport>>,
) -> String {
    let link = segment(model);
    let mut out = String::from("<section><p><a href=\"/\">All models</a>");
    let versions: Vec<u64> = reports
        .iter()
        .filter(|(_, list)| !list.is_empty())
        .map(|(v, _)| *v)
        .collect();
    if versions.len() > 1 || (versions.len() == 1 && shown != versions.first().copied()) {
        out.push_str(" · reports of version ");
        for v in versions {
            if Some(v) == shown {
                out.push_str(&format!("<strong>{v}</strong> "));
            } else {
                out.push_str(&format!(
                    "<a href=\"/v2/models/{link}/versions/{v}/drift/report\">{v}</a> "
                ));
            }
        }
    }
    out.push_str(&format!(
        " · JSON: <a href=\"/v2/models/{link}/drift\">drift</a>, \
         <a href=\"/v2/models/{link}/quality\">quality</a></p>"
    ));
    if let Some(v) = shown {
        if let Some(source) = monitor.baselines().get(&v) {
            out.push_str(&format!(
                "<p>Baseline of version {v}: {}</p>",
                html::escape(source)
            ));
        }
    }
    out.push_str("</section>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_encode_names() {
        assert_eq!(segment("iris"), "iris");
        assert_eq!(segment("a b/\"<"), "a%20b%2F%22%3C");
    }
}
