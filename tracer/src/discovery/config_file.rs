//! `--config FILE`: the services of a host, in YAML. Every key is checked:
//! an unknown one or a bad value is an error naming its line.
//!
//! ```yaml
//! capture_headers: [x-tenant]   # for every service (the kernel's list is global)
//! services:
//!   - name: shop
//!     systemd_unit: shop.service
//!     routes: ["/users/{id}"]
//!   - name: static-files
//!     port: 8080-8081
//!     exe: ["python3*"]
//!     keep_query_string: true
//! ```
use std::{fmt, marker::PhantomData, path::Path, str::FromStr};

use serde::{
    Deserialize, Deserializer,
    de::{self, IntoDeserializer as _, SeqAccess, Visitor},
};

use super::selector::{self, PortRange, Selector, ServiceSpec};
use crate::{capture::HeaderName, telemetry::routes::RoutePattern};

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Invalid {
        path: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{path}: {problem}")]
    Empty { path: String, problem: &'static str },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    services: Vec<Entry>,
    #[serde(default, deserialize_with = "one_or_many")]
    capture_headers: Vec<Parsed<HeaderName>>,
}

/// What a config file says: its services, and the request headers to
/// capture for all of them.
pub struct ConfigFile {
    pub services: Vec<ServiceSpec>,
    pub capture_headers: Vec<HeaderName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pid: Vec<Parsed<u32>>,
    #[serde(default, deserialize_with = "one_or_many")]
    port: Vec<Parsed<PortRange>>,
    #[serde(default, deserialize_with = "one_or_many")]
    exe: Vec<Parsed<selector::ExePattern>>,
    #[serde(default, deserialize_with = "one_or_many")]
    cgroup: Vec<Parsed<CgroupArg>>,
    #[serde(default, deserialize_with = "one_or_many")]
    systemd_unit: Vec<Parsed<UnitArg>>,
    #[serde(default)]
    keep_query_string: bool,
    #[serde(default, deserialize_with = "one_or_many")]
    routes: Vec<Parsed<RoutePattern>>,
}

pub fn load(path: &Path) -> Result<ConfigFile, ConfigFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text).map_err(|err| match err {
        ParseError::Yaml(source) => ConfigFileError::Invalid {
            path: shown.clone(),
            source,
        },
        ParseError::Empty(problem) => ConfigFileError::Empty {
            path: shown.clone(),
            problem,
        },
    })
}

enum ParseError {
    Yaml(serde_yaml_ng::Error),
    Empty(&'static str),
}

fn parse(text: &str) -> Result<ConfigFile, ParseError> {
    let file: File = serde_yaml_ng::from_str(text).map_err(ParseError::Yaml)?;
    if file.services.is_empty() {
        return Err(ParseError::Empty("`services` lists no service"));
    }
    let services: Vec<ServiceSpec> = file.services.into_iter().map(Entry::into_spec).collect();
    if services.iter().any(|service| service.selectors.is_empty()) {
        return Err(ParseError::Empty(
            "a service has no selector (pid, port, exe, cgroup or systemd_unit)",
        ));
    }
    Ok(ConfigFile {
        services,
        capture_headers: file
            .capture_headers
            .into_iter()
            .map(|name| name.0)
            .collect(),
    })
}

impl Entry {
    fn into_spec(self) -> ServiceSpec {
        let selectors = (self.pid.into_iter().map(|pid| Selector::Pid(pid.0)))
            .chain(self.port.into_iter().map(|port| Selector::Ports(port.0)))
            .chain(self.exe.into_iter().map(|exe| Selector::Exe(exe.0)))
            .chain(self.cgroup.into_iter().map(|path| path.0.0))
            .chain(self.systemd_unit.into_iter().map(|unit| unit.0.0))
            .collect();
        ServiceSpec {
            name: self.name,
            selectors,
            keep_query: self.keep_query_string,
            routes: self.routes.into_iter().map(|route| route.0).collect(),
        }
    }
}

/// A `--cgroup` value, checked to exist when it is read.
struct CgroupArg(Selector);

impl FromStr for CgroupArg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        selector::cgroup_selector(text).map(Self)
    }
}

struct UnitArg(Selector);

impl FromStr for UnitArg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        selector::unit_name(text).map(|name| Self(Selector::Unit(name)))
    }
}

/// A value parsed from its scalar with `FromStr`, so that YAML's error
/// carries the line of the bad value.
struct Parsed<T>(T);

impl<'de, T: FromStr<Err: fmt::Display>> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Scalar<T>(PhantomData<T>);
        impl<T: FromStr<Err: fmt::Display>> Visitor<'_> for Scalar<T> {
            type Value = Parsed<T>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a number or a string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Parsed<T>, E> {
                text.parse().map(Parsed).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, number: u64) -> Result<Parsed<T>, E> {
                self.visit_str(&number.to_string())
            }
            fn visit_i64<E: de::Error>(self, number: i64) -> Result<Parsed<T>, E> {
                self.visit_str(&number.to_string())
            }
        }
        deserializer.deserialize_any(Scalar(PhantomData))
    }
}

/// `key: value` or `key: [value, ...]`.
fn one_or_many<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct OneOrMany<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a value or a list of values")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut values = Vec::new();
            while let Some(value) = seq.next_element()? {
                values.push(value);
            }
            Ok(values)
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<T>, E> {
            T::deserialize(text.into_deserializer()).map(|value| vec![value])
        }
        fn visit_u64<E: de::Error>(self, number: u64) -> Result<Vec<T>, E> {
            T::deserialize(number.into_deserializer()).map(|value| vec![value])
        }
        fn visit_i64<E: de::Error>(self, number: i64) -> Result<Vec<T>, E> {
            T::deserialize(number.into_deserializer()).map(|value| vec![value])
        }
    }
    deserializer.deserialize_any(OneOrMany(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(ParseError::Yaml(err)) => err.to_string(),
            Err(ParseError::Empty(problem)) => problem.to_owned(),
        }
    }

    #[test]
    fn two_services_with_every_selector_form() {
        let file = parse(
            "capture_headers: X-Tenant\nservices:\n  - name: shop\n    systemd_unit: shop\n    routes: [\"/users/{id}\"]\n    port: [8000, \"9000-9001\"]\n  - exe: gunicorn\n    pid: 1\n    keep_query_string: true\n    cgroup: /\n",
        )
        .unwrap_or_else(|_| panic!("valid"));
        assert_eq!(file.capture_headers, [HeaderName("x-tenant".into())]);
        let services = file.services;
        assert_eq!(services.len(), 2);
        assert_eq!(services[0].name.as_deref(), Some("shop"));
        assert_eq!(services[0].routes.len(), 1);
        assert_eq!(services[0].ports().len(), 3);
        assert!(services[0].selects_port(9001));
        assert!(
            matches!(&services[0].selectors[2], Selector::Unit(unit) if unit == "shop.service")
        );
        assert!(services[1].keep_query && services[1].selects_pid(1));
        assert!(services[1].watches_execs());
    }

    #[test]
    fn errors_name_the_line() {
        let unknown = error("services:\n  - name: a\n    prot: 8000\n");
        assert!(
            unknown.contains("unknown field `prot`") && unknown.contains("line 3"),
            "{unknown}"
        );
        let bad_port = error("services:\n  - name: a\n    port: [8000, 70000]\n");
        assert!(
            bad_port.contains("70000") && bad_port.contains("line 3"),
            "{bad_port}"
        );
        let bad_cgroup = error("services:\n  - cgroup: /no/such/cgroup/here\n");
        assert!(
            bad_cgroup.contains("does not exist") && bad_cgroup.contains("line 2"),
            "{bad_cgroup}"
        );
        assert!(error("services: []\n").contains("no service"));
        assert!(error("services:\n  - name: a\n").contains("no selector"));
        assert!(error("services:\n  - name: a\n    routes: [users]\n").contains("line 3"));
        assert!(error("listen: 1\n").contains("unknown field"));
        let bad_header = error("capture_headers: [x-a, \"x b\"]\nservices:\n  - pid: 1\n");
        assert!(
            bad_header.contains("invalid header name") && bad_header.contains("line 1"),
            "{bad_header}"
        );
    }
}
