//! Which traced task belongs to which instance of which service. A
//! process's descendants belong to its instance (the kernel follows their
//! forks). A task that exits is remembered for a while, because its last
//! requests are finished after it is gone (on close, or by the idle sweep);
//! an instance is retired when its last task is forgotten.
use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{process::ProcessInfo, resource::ResourceBase, selector::ServiceSpec};
use crate::telemetry::instance::Instance;

pub struct Registry {
    services: Vec<ServiceSpec>,
    base: ResourceBase,
    /// Task (process or thread id) to its instance.
    members: HashMap<u32, Arc<Instance>>,
    /// Tasks gone, with when they went.
    departed: HashMap<u32, (Arc<Instance>, Instant)>,
    /// Tasks per instance, departed ones included, by the instance's address.
    live: HashMap<usize, usize>,
    /// Instances whose last task went other than by [`Registry::forget_departed`].
    retired: Vec<Arc<Instance>>,
    /// Each instance by the pid of its root process.
    roots: HashMap<u32, Arc<Instance>>,
}

/// How long a departed task's requests are still attributed to it: well
/// past the idle sweep that finishes an unterminated response.
pub const DEPARTED_GRACE: Duration = Duration::from_secs(10);

fn key(instance: &Arc<Instance>) -> usize {
    Arc::as_ptr(instance) as usize
}

impl Registry {
    pub fn new(services: Vec<ServiceSpec>, base: ResourceBase) -> Self {
        Self {
            services,
            base,
            members: HashMap::new(),
            departed: HashMap::new(),
            live: HashMap::new(),
            retired: Vec::new(),
            roots: HashMap::new(),
        }
    }

    pub fn services(&self) -> &[ServiceSpec] {
        &self.services
    }

    /// The instance of a task, alive or departed not long ago.
    pub fn instance_of(&self, task: u32) -> Option<&Arc<Instance>> {
        self.members
            .get(&task)
            .or_else(|| self.departed.get(&task).map(|(instance, _)| instance))
    }

    pub fn is_traced(&self, task: u32) -> bool {
        self.members.contains_key(&task)
    }

    /// Whether `pid` is the root process of an instance.
    pub fn is_root(&self, pid: u32) -> bool {
        self.roots.contains_key(&pid)
    }

    /// Whether service `index` has an instance.
    pub fn serves(&self, index: usize) -> bool {
        self.roots
            .values()
            .any(|instance| instance.service == index)
    }

    /// Live tasks.
    pub fn tasks(&self) -> BTreeSet<u32> {
        self.members.keys().copied().collect()
    }

    /// The [`Instance::key`] of every instance with a task, departed or not.
    pub fn instance_keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.live.keys().copied()
    }

    /// Whether no selected task is alive.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether every service is selected by pid alone: then the tracer is
    /// done when those trees are.
    pub fn only_pids(&self) -> bool {
        !self
            .services
            .iter()
            .any(ServiceSpec::waits_for_new_processes)
    }

    /// The first service whose selectors take this process (its pid, its
    /// image or place, or one of `ports` it listens on), and every other
    /// service that would have, for the log.
    pub fn select(&self, process: &ProcessInfo, ports: &BTreeSet<u16>) -> Vec<usize> {
        self.services
            .iter()
            .enumerate()
            .filter(|(_, spec)| {
                spec.selects_pid(process.pid)
                    || spec.selects_image(process)
                    || ports.iter().any(|&port| spec.selects_port(port))
            })
            .map(|(index, _)| index)
            .collect()
    }

    /// A new instance of `service` rooted at `root`.
    pub fn adopt(&mut self, service: usize, root: &ProcessInfo) -> Arc<Instance> {
        let instance = Arc::new(Instance {
            service,
            resource: self.base.instance(&self.services[service], root),
        });
        self.join(root.pid, &instance);
        self.roots.insert(root.pid, instance.clone());
        instance
    }

    /// The root of an instance replaced its image (a wrapper such as
    /// `taskset` or a shell became the server): its resource is rebuilt
    /// from the new image, as a new instance that takes every task of the
    /// old one. `None` when `root` is no instance's root.
    pub fn renew(&mut self, root: &ProcessInfo) -> Option<Arc<Instance>> {
        let old = self.roots.get(&root.pid)?.clone();
        let renewed = Arc::new(Instance {
            service: old.service,
            resource: self.base.instance(&self.services[old.service], root),
        });
        let moved: Vec<u32> = self
            .members
            .iter()
            .filter(|(_, instance)| Arc::ptr_eq(instance, &old))
            .map(|(&task, _)| task)
            .collect();
        for task in moved {
            self.members.insert(task, renewed.clone());
            *self.live.entry(key(&renewed)).or_default() += 1;
            if self.leave(&old) {
                self.retired.push(old.clone());
            }
        }
        self.roots.insert(root.pid, renewed.clone());
        Some(renewed)
    }

    /// `task` belongs to `instance` from now on (a fork, or a descendant
    /// found at adoption), unless it already belongs to one: a task is
    /// traced once, under the instance that had it first.
    pub fn join(&mut self, task: u32, instance: &Arc<Instance>) {
        if self.members.contains_key(&task) {
            return;
        }
        if let Some((previous, _)) = self.departed.remove(&task)
            && self.leave(&previous)
        {
            // A reused id: the departed task's late requests go unattributed.
            self.retired.push(previous);
        }
        self.members.insert(task, instance.clone());
        *self.live.entry(key(instance)).or_default() += 1;
    }

    /// The task exited (`now`).
    pub fn depart(&mut self, task: u32, now: Instant) {
        if let Some(instance) = self.members.remove(&task) {
            self.departed.insert(task, (instance, now));
        }
    }

    /// Departs every task `alive` denies (exits whose record was lost).
    pub fn depart_dead(&mut self, alive: impl Fn(u32) -> bool, now: Instant) {
        let gone: Vec<u32> = self
            .members
            .keys()
            .copied()
            .filter(|&task| !alive(task))
            .collect();
        for task in gone {
            self.depart(task, now);
        }
    }

    /// Forgets tasks departed before `before`; returns the instances whose
    /// last task that was.
    pub fn forget_departed(&mut self, before: Instant) -> Vec<Arc<Instance>> {
        let old: Vec<u32> = self
            .departed
            .iter()
            .filter(|(_, (_, at))| *at < before)
            .map(|(&task, _)| task)
            .collect();
        let mut retired = std::mem::take(&mut self.retired);
        for task in old {
            if let Some((instance, _)) = self.departed.remove(&task)
                && self.leave(&instance)
            {
                retired.push(instance);
            }
        }
        for instance in &retired {
            self.roots
                .retain(|_, root_of| !Arc::ptr_eq(root_of, instance));
        }
        retired
    }

    /// Whether that was the instance's last task.
    fn leave(&mut self, instance: &Arc<Instance>) -> bool {
        let Some(count) = self.live.get_mut(&key(instance)) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.live.remove(&key(instance));
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::selector::Selector;

    fn registry() -> Registry {
        let service = |name: &str, selector| ServiceSpec {
            name: Some(name.into()),
            selectors: vec![selector],
            ..Default::default()
        };
        Registry::new(
            vec![
                service("by-port", Selector::Ports("8000".parse().unwrap())),
                service("by-exe", Selector::Exe("gunicorn".parse().unwrap())),
            ],
            ResourceBase {
                host_name: "h".into(),
                attributes: Vec::new(),
                service_name: None,
            },
        )
    }

    #[test]
    fn first_service_wins_and_instances_retire_with_their_last_task() {
        let mut registry = registry();
        assert!(!registry.only_pids());
        let master = ProcessInfo {
            pid: 100,
            comm: "gunicorn".into(),
            ..Default::default()
        };
        assert_eq!(
            registry.select(&master, &BTreeSet::from([8000])),
            vec![0, 1]
        );
        assert_eq!(registry.select(&master, &BTreeSet::new()), vec![1]);
        let instance = registry.adopt(0, &master);
        assert_eq!(instance.service_name(), "by-port");
        registry.join(101, &instance);
        registry.join(102, &instance);
        assert_eq!(registry.tasks(), BTreeSet::from([100, 101, 102]));
        let start = Instant::now();
        registry.depart(101, start);
        registry.depart(999, start);
        registry.depart_dead(|task| task != 100 && task != 102, start + DEPARTED_GRACE);
        assert!(registry.is_empty());
        assert!(
            registry.instance_of(102).is_some(),
            "a departed task's last requests are still attributed"
        );
        assert!(
            registry.forget_departed(start + DEPARTED_GRACE).is_empty(),
            "102 is recent"
        );
        let retired = registry.forget_departed(start + 3 * DEPARTED_GRACE);
        assert_eq!(retired.len(), 1);
        assert!(Arc::ptr_eq(&retired[0], &instance));
        assert!(registry.instance_of(102).is_none());
    }

    #[test]
    fn a_root_that_execs_renews_its_instance() {
        let mut registry = registry();
        let wrapper = ProcessInfo {
            pid: 5,
            comm: "taskset".into(),
            ..Default::default()
        };
        let first = registry.adopt(1, &wrapper);
        registry.join(6, &first);
        let server = ProcessInfo {
            comm: "gunicorn".into(),
            ..wrapper.clone()
        };
        let renewed = registry.renew(&server).expect("5 is a root");
        assert_eq!(renewed.service_name(), "by-exe");
        assert!(Arc::ptr_eq(registry.instance_of(6).unwrap(), &renewed));
        let retired = registry.forget_departed(Instant::now());
        assert!(retired.len() == 1 && Arc::ptr_eq(&retired[0], &first));
        assert!(
            registry
                .renew(&ProcessInfo {
                    pid: 6,
                    ..Default::default()
                })
                .is_none()
        );
    }

    #[test]
    fn a_task_stays_with_the_instance_that_had_it_first() {
        let mut registry = registry();
        let first = registry.adopt(
            1,
            &ProcessInfo {
                pid: 1,
                ..Default::default()
            },
        );
        let second = registry.adopt(
            1,
            &ProcessInfo {
                pid: 2,
                ..Default::default()
            },
        );
        registry.join(1, &second);
        assert!(Arc::ptr_eq(registry.instance_of(1).unwrap(), &first));
        let now = Instant::now();
        registry.depart(1, now);
        registry.join(1, &second);
        let retired = registry.forget_departed(now + DEPARTED_GRACE);
        assert!(
            retired.len() == 1 && Arc::ptr_eq(&retired[0], &first),
            "id 1 was reused"
        );
    }
}
