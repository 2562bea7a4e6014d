//! `http.route` for a request path, and the limits that keep routes and span
//! names low-cardinality (the rules and their defaults: docs/routes.md).
//!
//! A path gets its route from, in order: the user's `--route` patterns (the
//! most specific match wins), then `--unmatched-route`. Its default,
//! `heuristic`, replaces segments that look like identifiers with `{id}` and
//! passes the result through a [`RouteTrie`] of the routes seen so far,
//! which stops learning a node's children past `--route-collapse-children`
//! (the `{org}/{repo}` paths no segment classifier can tell). `path` takes
//! the path itself, `unset` gives no route.
//!
//! Two limits then bound what leaves the host, counted as overflows (not
//! losses, nothing is dropped): past `--span-name-limit` distinct names a
//! new server span is named `{method}`, and past `--route-limit` distinct
//! routes the duration metric records a new one as `http.route=""` with
//! `otel.metric.overflow=true`, the OpenTelemetry SDK's cardinality-limit
//! convention. Each traced service has its own [`RouteConfig`] and one
//! [`Routes`] (trie and limits), shared by its instances and by no other
//! service.
use std::{str::FromStr, sync::Arc};

use foldhash::{HashMap, HashSet};

use opentelemetry::KeyValue;

use crate::{
    assembly::CompletedRequest,
    stats::{Overflow, Stats},
};

/// What an identifier segment becomes in a route.
const ID: &str = "{id}";
/// Trie nodes at most, a few MB: twenty for each route the default
/// `--route-limit` admits. Past it the trie learns nothing more and an
/// unknown segment is `{id}`, as at a collapsed node.
const MAX_TRIE_NODES: usize = 20_000;

/// `--route-collapse-children`: a node's distinct literal children learned
/// at most. Beyla's default for the same bound; docs/routes.md weighs it.
pub const DEFAULT_COLLAPSE_CHILDREN: u32 = 10;
/// `--route-limit`: distinct `http.route` values in the duration metric.
pub const DEFAULT_ROUTE_LIMIT: u32 = 1_000;
/// `--span-name-limit`: distinct server span names.
pub const DEFAULT_SPAN_NAME_LIMIT: u32 = 1_000;
/// Resolutions kept, by `{method} {path}`; the cache is emptied when full.
const CACHED_RESOLUTIONS: usize = 1_024;
/// Longer keys are resolved every time, so the cache stays small.
const MAX_CACHED_KEY: usize = 256;

/// What gives `http.route` to a path that no `--route` pattern matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UnmatchedRoute {
    /// Identifier-looking segments become `{id}`, then the route trie.
    Heuristic,
    /// The path itself (high cardinality: only the limits bound it).
    Path,
    /// No `http.route`; the span is named `{method}`.
    Unset,
}

#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub patterns: Vec<RoutePattern>,
    pub unmatched: UnmatchedRoute,
    pub collapse_children: usize,
    pub route_limit: usize,
    pub span_name_limit: usize,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            patterns: Vec::new(),
            unmatched: UnmatchedRoute::Heuristic,
            collapse_children: DEFAULT_COLLAPSE_CHILDREN as usize,
            route_limit: DEFAULT_ROUTE_LIMIT as usize,
            span_name_limit: DEFAULT_SPAN_NAME_LIMIT as usize,
        }
    }
}

/// One segment of a [`RoutePattern`]. The variant order is specificity: at
/// the first segment where two matching patterns differ, the lesser wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PatternSegment {
    Literal(String),
    /// `{name}`: one non-empty segment.
    Param,
    /// A trailing `{name...}`: the rest of the path, one segment or more
    /// (`/static/{file...}` matches `/static/` but not `/static`).
    Rest,
}

/// A `--route` pattern: `/users/{id}`, `/static/{file...}`.
#[derive(Clone, Debug)]
pub struct RoutePattern {
    text: Arc<str>,
    segments: Vec<PatternSegment>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("route pattern {0:?} does not start with '/'")]
    NotAbsolute(String),
    #[error(
        "segment {segment:?} of route pattern {pattern:?} is neither literal text nor a whole {{name}} or {{name...}}"
    )]
    BadSegment { pattern: String, segment: String },
    #[error("{{name...}} can only end a route pattern, not sit inside {0:?}")]
    RestNotLast(String),
}

impl FromStr for RoutePattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| PatternError::NotAbsolute(text.to_owned()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let segment = parse_segment(part).ok_or_else(|| PatternError::BadSegment {
                pattern: text.to_owned(),
                segment: (*part).to_owned(),
            })?;
            if segment == PatternSegment::Rest && index + 1 < parts.len() {
                return Err(PatternError::RestNotLast(text.to_owned()));
            }
            segments.push(segment);
        }
        Ok(Self {
            text: text.into(),
            segments,
        })
    }
}

fn parse_segment(part: &str) -> Option<PatternSegment> {
    let is_name = |name: &str| {
        !name.is_empty()
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
    };
    match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
        Some(inner) => match inner.strip_suffix("...") {
            Some(name) if is_name(name) => Some(PatternSegment::Rest),
            None if is_name(inner) => Some(PatternSegment::Param),
            _ => None,
        },
        None if !part.contains(['{', '}', '?', '#']) => Some(PatternSegment::Literal(part.into())),
        None => None,
    }
}

impl RoutePattern {
    fn matches(&self, path: &[&str]) -> bool {
        let mut rest = path.iter();
        for (index, segment) in self.segments.iter().enumerate() {
            match segment {
                PatternSegment::Rest => return path.len() > index,
                PatternSegment::Param => {
                    if rest.next().is_none_or(|part| part.is_empty()) {
                        return false;
                    }
                }
                PatternSegment::Literal(literal) => {
                    if rest.next() != Some(&literal.as_str()) {
                        return false;
                    }
                }
            }
        }
        rest.next().is_none()
    }
}

/// Whether a path segment looks like an identifier rather than a name the
/// app's code spells: a number, a UUID, a date, or a segment with a word
/// (run of letters and digits) that is a hex token or a long mixed token.
/// Slugs (`how-to-trace-python`, `iphone-15-pro`), versions (`v2`) and plain
/// file names (`main.css`, `jquery-3.7.1.min.js`) stay; a fingerprinted
/// file name (`app.3f2a1b.js`) is an identifier as a whole.
pub fn looks_like_identifier(segment: &str) -> bool {
    is_numeric(segment)
        || is_uuid(segment)
        || starts_with_date(segment)
        || segment
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|word| is_hex_token(word) || is_mixed_token(word))
}

/// Digits with separators: `42`, `2024-01-31`, `1.2.3`, `10:30`.
fn is_numeric(segment: &str) -> bool {
    segment.starts_with(|c: char| c.is_ascii_digit())
        && segment
            .bytes()
            .all(|byte| byte.is_ascii_digit() || b"-._:,+".contains(&byte))
}

fn is_uuid(segment: &str) -> bool {
    segment.len() == 36
        && segment
            .bytes()
            .enumerate()
            .all(|(index, byte)| match index {
                8 | 13 | 18 | 23 => byte == b'-',
                _ => byte.is_ascii_hexdigit(),
            })
}

/// `2024-01-31` followed by anything (`T10:15:00Z`).
fn starts_with_date(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    bytes.len() >= 10
        && bytes[..10]
            .iter()
            .enumerate()
            .all(|(index, byte)| match index {
                4 | 7 => *byte == b'-',
                _ => byte.is_ascii_digit(),
            })
}

/// Six hex digits or more, one of them decimal: hashes, short commit ids,
/// long numbers. The decimal digit keeps words such as `decade` or `facade`.
fn is_hex_token(word: &str) -> bool {
    word.len() >= 6
        && word.bytes().all(|byte| byte.is_ascii_hexdigit())
        && word.bytes().any(|byte| byte.is_ascii_digit())
}

/// Eight characters or more where letters and digits alternate at least
/// three times, as in random tokens and base64 (`dQw4w9WgXcQ`); names that
/// carry a number (`sha256sum`, `v1beta1`, `oauth2callback`) alternate less.
fn is_mixed_token(word: &str) -> bool {
    let alternations = word
        .as_bytes()
        .windows(2)
        .filter(|pair| pair[0].is_ascii_digit() != pair[1].is_ascii_digit())
        .count();
    word.len() >= 8 && alternations >= 3
}

/// The routes seen so far, one node per segment. A node learns its first
/// `collapse_children` distinct literal children; past them it is
/// collapsed: a segment it has not learned becomes `{id}` and goes to its
/// `{id}` child, where identifier segments go anyway. What it learned stays
/// (docs/routes.md: a static `/login` next to `/{owner}`, and a route never
/// changes name once exported).
struct RouteTrie {
    root: Node,
    nodes: usize,
    max_nodes: usize,
    collapse_children: usize,
}

#[derive(Default)]
struct Node {
    literals: HashMap<Box<str>, Node>,
    id: Option<Box<Node>>,
}

impl RouteTrie {
    fn new(collapse_children: usize, max_nodes: usize) -> Self {
        Self {
            root: Node::default(),
            nodes: 1,
            max_nodes,
            collapse_children,
        }
    }

    /// The route of `segments` (a path split at `/`, after its leading one),
    /// learning what the trie has room for.
    fn route(&mut self, segments: &[&str]) -> String {
        let mut route = String::with_capacity(segments.iter().map(|s| s.len() + 1).sum());
        // `None` once the path left what the trie could learn: every
        // segment the heuristic keeps is then unknown, so `{id}`.
        let mut node = Some(&mut self.root);
        for &segment in segments {
            route.push('/');
            let identifier = looks_like_identifier(segment);
            node = match node {
                Some(current) if !identifier && current.literals.contains_key(segment) => {
                    route.push_str(segment);
                    current.literals.get_mut(segment)
                }
                Some(current)
                    if !identifier
                        && current.literals.len() < self.collapse_children
                        && self.nodes < self.max_nodes =>
                {
                    route.push_str(segment);
                    self.nodes += 1;
                    Some(current.literals.entry(segment.into()).or_default())
                }
                Some(current) => {
                    route.push_str(ID);
                    if current.id.is_none() && self.nodes < self.max_nodes {
                        self.nodes += 1;
                        current.id = Some(Box::default());
                    }
                    current.id.as_deref_mut()
                }
                None => {
                    route.push_str(ID);
                    None
                }
            };
        }
        route
    }
}

/// Distinct values let through, `limit` at most; past it new ones are not.
struct Limited {
    admitted: HashSet<Arc<str>>,
    limit: usize,
}

impl Limited {
    fn new(limit: usize) -> Self {
        Self {
            admitted: HashSet::default(),
            limit,
        }
    }

    /// `value` as admitted, or `None` when it is new and the limit is reached.
    fn admit(&mut self, value: &str) -> Option<Arc<str>> {
        if let Some(known) = self.admitted.get(value) {
            return Some(known.clone());
        }
        if self.admitted.len() >= self.limit {
            return None;
        }
        let value: Arc<str> = value.into();
        self.admitted.insert(value.clone());
        Some(value)
    }
}

/// What a request is named and tagged with.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// `http.route`, when known; the span carries it even past the route
    /// limit, which bounds metrics only.
    pub route: Option<Arc<str>>,
    pub span_name: Arc<str>,
    /// The route is past `--route-limit`: the metric records the overflow.
    metric_overflow: bool,
}

impl Resolved {
    /// The route's attributes on the duration metric.
    pub fn push_metric_attributes(&self, attributes: &mut Vec<KeyValue>) {
        match &self.route {
            Some(_) if self.metric_overflow => {
                attributes.push(KeyValue::new("http.route", ""));
                attributes.push(KeyValue::new("otel.metric.overflow", true));
            }
            Some(route) => attributes.push(KeyValue::new("http.route", route.clone())),
            None => {}
        }
    }
}

/// A resolution as the cache keeps it, with whether its span name was
/// past the limit: overflows are counted per request, hit or not.
#[derive(Clone)]
struct Resolution {
    resolved: Resolved,
    span_name_overflow: bool,
}

/// The per-service route state: patterns, trie, both limits, and the
/// resolutions of recent requests.
pub struct Routes {
    /// Most specific first.
    patterns: Vec<RoutePattern>,
    unmatched: UnmatchedRoute,
    trie: RouteTrie,
    metric_routes: Limited,
    span_names: Limited,
    /// A request resolves as it did the first time: the trie and the
    /// limits only ever learn, and what they learned stays. So a repeat
    /// skips the trie, the span name's formatting and both limits.
    cached: HashMap<Box<str>, Resolution>,
    /// The cache's key of the request being resolved, reused.
    key: String,
    stats: Arc<Stats>,
}

impl Routes {
    pub fn new(config: RouteConfig, stats: Arc<Stats>) -> Self {
        let mut patterns = config.patterns;
        patterns.sort_by(|a, b| a.segments.cmp(&b.segments));
        Self {
            patterns,
            unmatched: config.unmatched,
            trie: RouteTrie::new(config.collapse_children, MAX_TRIE_NODES),
            metric_routes: Limited::new(config.route_limit),
            span_names: Limited::new(config.span_name_limit),
            cached: HashMap::default(),
            key: String::new(),
            stats,
        }
    }

    pub fn resolve(&mut self, request: &CompletedRequest) -> Resolved {
        let (method, path) = (&request.request.method, &request.request.path);
        let mut key = std::mem::take(&mut self.key);
        key.clear();
        key.extend([method.as_str(), " ", path.as_str()]);
        let resolution = match self.cached.get(key.as_str()) {
            Some(cached) => cached.clone(),
            None => {
                let resolution = self.resolve_anew(method, path);
                if key.len() <= MAX_CACHED_KEY {
                    if self.cached.len() >= CACHED_RESOLUTIONS {
                        self.cached.clear();
                    }
                    self.cached.insert(key.as_str().into(), resolution.clone());
                }
                resolution
            }
        };
        self.key = key;
        if resolution.span_name_overflow {
            self.stats.count_overflow(Overflow::SpanName);
        }
        if resolution.resolved.metric_overflow {
            self.stats.count_overflow(Overflow::Route);
        }
        resolution.resolved
    }

    /// Resolves a request through the patterns, the trie and the limits
    /// (which learn from it).
    fn resolve_anew(&mut self, method: &str, path: &str) -> Resolution {
        let Some(route) = self.route(path) else {
            return Resolution {
                resolved: Resolved {
                    route: None,
                    span_name: method.into(),
                    metric_overflow: false,
                },
                span_name_overflow: false,
            };
        };
        let (span_name, span_name_overflow) =
            match self.span_names.admit(&format!("{method} {route}")) {
                Some(admitted) => (admitted, false),
                None => (method.into(), true),
            };
        let (route, metric_overflow) = match self.metric_routes.admit(&route) {
            Some(admitted) => (admitted, false),
            None => (route.into(), true),
        };
        Resolution {
            resolved: Resolved {
                route: Some(route),
                span_name,
                metric_overflow,
            },
            span_name_overflow,
        }
    }

    /// `http.route` of `path`, before the limits. Only an origin-form target
    /// (`/…`) has one; `*` and absolute URLs have none.
    fn route(&mut self, path: &str) -> Option<String> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        if let Some(pattern) = self.patterns.iter().find(|p| p.matches(&segments)) {
            return Some(pattern.text.to_string());
        }
        match self.unmatched {
            UnmatchedRoute::Heuristic => Some(self.trie.route(&segments)),
            UnmatchedRoute::Path => Some(path.to_owned()),
            UnmatchedRoute::Unset => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::http::RequestHead;

    fn request(method: &str, path: &str) -> CompletedRequest {
        CompletedRequest {
            tgid: 1,
            side: crate::events::Side::Server,
            ids: crate::trace_context::SpanIds::root(),
            response_cut_short: false,
            tls: false,
            request: RequestHead {
                method: method.into(),
                path: path.into(),
                minor_version: 1,
                head_len: 40,
                host: None,
            },
            status: 200,
            start_ns: 1,
            first_read_ns: 2,
            end_ns: 3,
            meta: None,
            response_bytes: 0,
            response_body_bytes: None,
            captured_headers: Vec::new(),
        }
    }

    fn routes_with(config: RouteConfig) -> (Routes, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        (Routes::new(config, stats.clone()), stats)
    }

    fn patterns(texts: &[&str]) -> RouteConfig {
        RouteConfig {
            patterns: texts.iter().map(|text| text.parse().unwrap()).collect(),
            ..RouteConfig::default()
        }
    }

    fn route_of(routes: &mut Routes, path: &str) -> Option<String> {
        routes
            .resolve(&request("GET", path))
            .route
            .map(|route| route.to_string())
    }

    /// Letters only, distinct for each `n`, so the heuristic keeps them all.
    fn word(n: usize) -> String {
        let mut n = n.wrapping_mul(2_654_435_761) % 1_000_003 + 26;
        let mut word = String::new();
        while n > 0 {
            word.push(char::from(b'a' + (n % 26) as u8));
            n /= 26;
        }
        word
    }

    #[test]
    fn identifiers_become_id_and_names_stay() {
        let table = [
            ("/users/42", "/users/{id}"),
            ("/users/42/orders/9f1c2ab4e7", "/users/{id}/orders/{id}"),
            (
                "/orders/550e8400-e29b-41d4-a716-446655440000",
                "/orders/{id}",
            ),
            ("/blobs/550E8400E29B41D4A716446655440000", "/blobs/{id}"),
            (
                "/repos/git/commits/da39a3ee5e6b4b0d3255bfef95601890afd80709",
                "/repos/git/commits/{id}",
            ),
            ("/commit/9fceb02", "/commit/{id}"),
            ("/reports/2024-01-31", "/reports/{id}"),
            ("/events/2024-01-31T10:15:00Z/log", "/events/{id}/log"),
            ("/archive/20240131", "/archive/{id}"),
            ("/releases/1.2.3/notes", "/releases/{id}/notes"),
            ("/watch/dQw4w9WgXcQ", "/watch/{id}"),
            ("/reset/eyJhbGciOiJIUzI1NiJ9", "/reset/{id}"),
            ("/invite/Zm9vYmFyYmF6", "/invite/{id}"),
            ("/keys/sk_live_4eC39HqLyjWDarjtT1zdp7dc", "/keys/{id}"),
            ("/orders/ORD-2024-000123", "/orders/{id}"),
            ("/static/app.3f2a1b.js", "/static/{id}"),
            ("/v2/users/7", "/v2/users/{id}"),
            ("/api/v1beta1/pods", "/api/v1beta1/pods"),
            ("/blog/how-to-trace-python", "/blog/how-to-trace-python"),
            ("/products/iphone-15-pro", "/products/iphone-15-pro"),
            ("/oauth2/callback", "/oauth2/callback"),
            ("/dist/x86_64/sha256sum", "/dist/x86_64/sha256sum"),
            ("/static/css/main.css", "/static/css/main.css"),
            ("/static/jquery-3.7.1.min.js", "/static/jquery-3.7.1.min.js"),
            ("/cafe/decade/facade", "/cafe/decade/facade"),
            ("/", "/"),
            ("/users/", "/users/"),
        ];
        for (path, expected) in table {
            // A table this varied would collapse one trie's root: one each.
            let (mut routes, _) = routes_with(RouteConfig::default());
            assert_eq!(
                route_of(&mut routes, path).as_deref(),
                Some(expected),
                "{path}"
            );
        }
    }

    #[test]
    fn span_names_follow_the_route_and_the_query_is_no_part_of_it() {
        let (mut routes, _) = routes_with(RouteConfig::default());
        let resolved = routes.resolve(&request("POST", "/users/31?token=secret"));
        assert_eq!(&*resolved.span_name, "POST /users/{id}");
        assert_eq!(resolved.route.as_deref(), Some("/users/{id}"));
        let starred = routes.resolve(&request("OPTIONS", "*"));
        assert_eq!((&*starred.span_name, starred.route), ("OPTIONS", None));
    }

    #[test]
    fn the_trie_collapses_org_and_repo_paths() {
        let (mut routes, _) = routes_with(RouteConfig::default());
        assert_eq!(route_of(&mut routes, "/login").as_deref(), Some("/login"));
        let mut seen = BTreeSet::new();
        for org in 0..200 {
            for repo in 0..3 {
                let path = format!("/{}/{}/issues", word(org), word(1_000 + org * 3 + repo));
                seen.insert(route_of(&mut routes, &path).unwrap());
            }
        }
        assert_eq!(
            route_of(&mut routes, "/torvalds/linux/issues").as_deref(),
            Some("/{id}/{id}/issues")
        );
        // What the root learned before it collapsed stays.
        assert_eq!(route_of(&mut routes, "/login").as_deref(), Some("/login"));
        // The 9 orgs learned with /login, their 3 repos each, and under
        // `{id}` the first 10 repos and `{id}`: 27 + 11.
        assert_eq!(seen.len(), 38, "{seen:?}");
    }

    #[test]
    fn a_node_learns_at_most_collapse_children_literals() {
        let (mut routes, _) = routes_with(RouteConfig {
            collapse_children: 3,
            ..RouteConfig::default()
        });
        let got: Vec<_> = ["a", "b", "c", "d", "a", "e"]
            .iter()
            .map(|name| route_of(&mut routes, &format!("/items/{name}")).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                "/items/a",
                "/items/b",
                "/items/c",
                "/items/{id}",
                "/items/a",
                "/items/{id}"
            ]
        );
    }

    #[test]
    fn a_full_trie_gives_id_to_what_it_does_not_know() {
        let mut trie = RouteTrie::new(10, 3);
        assert_eq!(trie.route(&["shop", "cart"]), "/shop/cart");
        assert_eq!(trie.route(&["shop", "list", "all"]), "/shop/{id}/{id}");
        assert_eq!(trie.route(&["shop", "cart"]), "/shop/cart");
        assert_eq!(trie.nodes, 3);
    }

    #[test]
    fn patterns_come_before_the_heuristic_and_the_most_specific_wins() {
        let (mut routes, _) = routes_with(patterns(&[
            "/users/{user}",
            "/users/me",
            "/static/{file...}",
            "/static/{dir}/logo.png",
        ]));
        let cases = [
            ("/users/42", Some("/users/{user}")),
            ("/users/me", Some("/users/me")),
            ("/users/", Some("/users/")),
            ("/users/42/orders/7", Some("/users/{id}/orders/{id}")),
            ("/static/", Some("/static/{file...}")),
            ("/static/css/app.css", Some("/static/{file...}")),
            ("/static/img/logo.png", Some("/static/{dir}/logo.png")),
            ("/static", Some("/static")),
        ];
        for (path, expected) in cases {
            assert_eq!(route_of(&mut routes, path).as_deref(), expected, "{path}");
        }
    }

    #[test]
    fn unmatched_paths_follow_the_chosen_mode() {
        for (unmatched, expected) in [
            (UnmatchedRoute::Heuristic, Some("/orders/{id}")),
            (UnmatchedRoute::Path, Some("/orders/77")),
            (UnmatchedRoute::Unset, None),
        ] {
            let (mut routes, _) = routes_with(RouteConfig {
                unmatched,
                ..patterns(&["/users/{id}"])
            });
            assert_eq!(
                route_of(&mut routes, "/users/1").as_deref(),
                Some("/users/{id}")
            );
            assert_eq!(route_of(&mut routes, "/orders/77?x=1").as_deref(), expected);
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(matches!(
            "users/{id}".parse::<RoutePattern>(),
            Err(PatternError::NotAbsolute(_))
        ));
        for bad in [
            "/users/{}",
            "/users/{id",
            "/users/x{id}",
            "/a/{b c}",
            "/a?b=1",
        ] {
            assert!(
                matches!(
                    bad.parse::<RoutePattern>(),
                    Err(PatternError::BadSegment { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            "/files/{path...}/raw".parse::<RoutePattern>().unwrap_err(),
            PatternError::RestNotLast("/files/{path...}/raw".into())
        );
    }

    /// The metric's `http.route` values and the span names of `paths`.
    fn series(
        routes: &mut Routes,
        paths: impl Iterator<Item = String>,
    ) -> (BTreeSet<String>, BTreeSet<Arc<str>>) {
        let mut metric_routes = BTreeSet::new();
        let mut span_names = BTreeSet::new();
        for path in paths {
            let resolved = routes.resolve(&request("GET", &path));
            let mut attributes = Vec::new();
            resolved.push_metric_attributes(&mut attributes);
            metric_routes.insert(attributes[0].value.to_string());
            span_names.insert(resolved.span_name);
        }
        (metric_routes, span_names)
    }

    #[test]
    fn a_repeated_request_resolves_as_the_first_time_and_counts_its_overflows_again() {
        let (mut routes, stats) = routes_with(RouteConfig {
            unmatched: UnmatchedRoute::Path,
            route_limit: 1,
            span_name_limit: 1,
            ..RouteConfig::default()
        });
        let admitted = routes.resolve(&request("GET", "/a"));
        for _ in 0..3 {
            let late = routes.resolve(&request("GET", "/b"));
            let got = (
                &*late.span_name,
                late.route.as_deref(),
                late.metric_overflow,
            );
            assert_eq!(got, ("GET", Some("/b"), true));
        }
        let again = routes.resolve(&request("GET", "/a"));
        assert_eq!(
            (&*again.span_name, again.route, again.metric_overflow),
            (&*admitted.span_name, admitted.route, false)
        );
        let overflows: Vec<_> = stats.overflows().collect();
        assert_eq!(overflows, [(Overflow::Route, 3), (Overflow::SpanName, 3)]);
    }

    #[test]
    fn more_requests_than_the_cache_holds_resolve_as_before() {
        let (mut routes, _) = routes_with(RouteConfig::default());
        let first = routes.resolve(&request("GET", "/users/7/orders"));
        for n in 0..=CACHED_RESOLUTIONS {
            routes.resolve(&request("GET", &format!("/users/7/{}", word(n))));
        }
        let again = routes.resolve(&request("GET", "/users/7/orders"));
        assert_eq!(again.route.as_deref(), Some("/users/{id}/orders"));
        assert_eq!(
            (again.span_name, again.route),
            (first.span_name, first.route)
        );
    }

    #[test]
    fn five_thousand_distinct_words_leave_few_routes() {
        let (mut routes, stats) = routes_with(RouteConfig::default());
        let (metric_routes, span_names) = series(
            &mut routes,
            (0..5_000).map(|n| format!("/items/{}", word(n))),
        );
        let collapse = DEFAULT_COLLAPSE_CHILDREN as usize;
        assert_eq!(metric_routes.len(), collapse + 1);
        assert!(metric_routes.contains("/items/{id}"));
        assert_eq!(span_names.len(), collapse + 1);
        assert!(stats.overflows().all(|(_, count)| count == 0));
    }

    #[test]
    fn past_the_limits_routes_and_names_overflow_and_are_counted() {
        let (mut routes, stats) = routes_with(RouteConfig {
            unmatched: UnmatchedRoute::Path,
            route_limit: 100,
            span_name_limit: 50,
            ..RouteConfig::default()
        });
        let (metric_routes, span_names) = series(
            &mut routes,
            (0..5_000).map(|n| format!("/items/{}", word(n))),
        );
        // 100 routes and the overflow's "".
        assert_eq!(metric_routes.len(), 101);
        assert!(metric_routes.contains(""));
        // 50 names and the bare method.
        assert_eq!(span_names.len(), 51);
        assert!(span_names.contains("GET"));
        let overflows: Vec<_> = stats.overflows().collect();
        assert_eq!(
            overflows,
            [(Overflow::Route, 4_900), (Overflow::SpanName, 4_950)]
        );
        // An admitted route keeps its own series; the overflow carries the
        // SDK's marker, and the span still its route.
        let known = routes.resolve(&request("GET", &format!("/items/{}", word(0))));
        assert!(!known.metric_overflow);
        let late = routes.resolve(&request("GET", "/late/arrival"));
        let mut attributes = Vec::new();
        late.push_metric_attributes(&mut attributes);
        assert_eq!(
            attributes,
            [
                KeyValue::new("http.route", ""),
                KeyValue::new("otel.metric.overflow", true)
            ]
        );
        assert_eq!(late.route.as_deref(), Some("/late/arrival"));
        assert_eq!(&*late.span_name, "GET");
    }
}
