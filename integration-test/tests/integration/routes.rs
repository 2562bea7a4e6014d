//! Routes under real gunicorn: server spans named after `http.route`, never
//! the raw path, from the heuristic or from a `--route` pattern; the
//! duration histogram broken down by route; the route limit bounding the
//! metric only, its overflow counted.

use std::{collections::BTreeMap, time::Duration};

use harness::{
    app::WorkerClass,
    sink::{AttrValue, MetricPoint, ReceivedMetric, ReceivedSpan},
};

use crate::support::*;

const USERS: usize = 30;

/// GETs of `/users/1` to `/users/30`, then one of `/light`, one connection
/// each, under a tracer started with `args`; the server spans, once all
/// arrived, and the metrics, once the duration histogram counted every
/// request (the periodic export: the final one at shutdown is not waited
/// for).
async fn users_then_light(
    service: &str,
    args: &[&str],
) -> (Vec<ReceivedSpan>, Vec<ReceivedMetric>) {
    let app = start_app(WorkerClass::Sync, &[]).await;
    let sink = start_sink().await;
    let tracer = Tracer::start_with(app.master_pid(), &sink, service, args);
    let addr = app.addr();
    let sent = tokio::task::spawn_blocking(move || {
        (1..=USERS)
            .map(|n| format!("/users/{n}"))
            .chain(["/light".to_owned()])
            .map(|path| request(addr, "GET", &path, b""))
            .collect::<Vec<_>>()
    })
    .await
    .expect("client");
    assert!(sent.iter().all(|s| s.status == 200), "{sent:?}");
    let counted = || durations_by_route(&sink.metrics()).values().sum::<u64>();
    assert!(
        eventually(Duration::from_secs(20), || {
            server_spans(&sink, service).len() > USERS && counted() > USERS as u64
        })
        .await,
        "expected {} spans and durations, got {} and {}",
        USERS + 1,
        server_spans(&sink, service).len(),
        counted()
    );
    assert_eq!(tracer.stop().code(), exit_code(Exit::Ok));
    (server_spans(&sink, service), sink.metrics())
}

/// Server spans by name.
fn names(spans: &[ReceivedSpan]) -> BTreeMap<&str, usize> {
    let mut names = BTreeMap::new();
    for span in spans {
        *names.entry(span.name.as_str()).or_default() += 1;
    }
    names
}

fn route(span: &ReceivedSpan) -> Option<&str> {
    span.attributes
        .get("http.route")
        .and_then(AttrValue::as_str)
}

/// The attributes' value of `key` on one data point, as a string.
fn point_str<'a>(point: &'a MetricPoint, key: &str) -> Option<&'a str> {
    point.attributes.get(key).and_then(AttrValue::as_str)
}

/// `http.server.request.duration` counts by (`http.route`, whether the
/// point is the overflow's), the latest of the cumulative series.
fn durations_by_route(metrics: &[ReceivedMetric]) -> BTreeMap<(Option<String>, bool), u64> {
    let mut counts = BTreeMap::new();
    let points = metrics
        .iter()
        .filter(|metric| metric.name == "http.server.request.duration")
        .flat_map(|metric| &metric.points);
    for point in points {
        let key = (
            point_str(point, "http.route").map(str::to_owned),
            point.attributes.get("otel.metric.overflow") == Some(&AttrValue::Bool(true)),
        );
        let count = counts.entry(key).or_default();
        *count = point.count.unwrap_or_default().max(*count);
    }
    counts
}

/// The latest `tracer.cardinality_overflow` of `limit`.
fn overflows(metrics: &[ReceivedMetric], limit: &str) -> f64 {
    metrics
        .iter()
        .filter(|metric| metric.name == "tracer.cardinality_overflow")
        .flat_map(|metric| &metric.points)
        .filter(|point| point_str(point, "limit") == Some(limit))
        .filter_map(|point| point.value)
        .fold(0.0, f64::max)
}

/// The default heuristic: 30 user ids give one span name and one metric
/// series, `url.path` keeps each path. With `--route-limit 1`, `/light`
/// comes past the limit: its span keeps its route and name, the metric
/// records it as the overflow, and the overflow is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heuristic_routes_name_spans_and_the_route_limit_bounds_metrics() {
    let (spans, metrics) = users_then_light("routes-heuristic", &["--route-limit", "1"]).await;
    assert_eq!(
        names(&spans),
        BTreeMap::from([("GET /users/{id}", USERS), ("GET /light", 1)])
    );
    for span in &spans {
        let path = attr_str(span, "url.path");
        let expected = if path == "/light" {
            "/light"
        } else {
            assert!(
                path.starts_with("/users/") && path != "/users/{id}",
                "{path}"
            );
            "/users/{id}"
        };
        assert_eq!(route(span), Some(expected), "{path}");
    }
    assert_eq!(
        durations_by_route(&metrics),
        BTreeMap::from([
            ((Some("/users/{id}".to_owned()), false), USERS as u64),
            ((Some(String::new()), true), 1),
        ])
    );
    assert_eq!(overflows(&metrics, "route"), 1.0);
    assert_eq!(overflows(&metrics, "span_name"), 0.0);
}

/// A `--route` pattern names the same spans with the heuristic off
/// (`--unmatched-route unset`): `/users/<n>` gets its route from the
/// pattern, `/light` none, so its span is named `GET` and its metric point
/// has no `http.route`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_pattern_names_spans_and_unmatched_paths_can_go_without() {
    let (spans, metrics) = users_then_light(
        "routes-pattern",
        &["--route", "/users/{id}", "--unmatched-route", "unset"],
    )
    .await;
    assert_eq!(
        names(&spans),
        BTreeMap::from([("GET /users/{id}", USERS), ("GET", 1)])
    );
    for span in &spans {
        let expected = (span.name != "GET").then_some("/users/{id}");
        assert_eq!(route(span), expected, "{}", attr_str(span, "url.path"));
    }
    assert_eq!(
        durations_by_route(&metrics),
        BTreeMap::from([
            ((Some("/users/{id}".to_owned()), false), USERS as u64),
            ((None, false), 1),
        ])
    );
    assert_eq!(overflows(&metrics, "route"), 0.0);
}
