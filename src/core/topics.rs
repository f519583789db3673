//! The topic registry: which connections are subscribed to which topic.
//!
//! A plain map of topic → subscribers by id, generic over what a subscriber is (the net layer
//! keeps `Arc<Conn>`; tests keep numbers), so that it is tested without sockets. It reports the
//! two transitions the cluster link cares about: a topic's **first** subscriber (the node must
//! subscribe its channel) and its **last** one leaving (the node may unsubscribe). An empty topic
//! is removed at once: the registry holds no entry for a topic nobody follows, so its size is
//! bounded by the subscriptions, not by every topic ever named.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Subscribers by topic, then by connection id. Ordered by id, which is the order handshakes
/// completed: a fan-out walks a topic's connections in the order their sockets and `Conn`s were
/// allocated, which costs less per write than a hash map's order (see `Registry` in
/// `net/server.rs`).
#[derive(Debug)]
pub(crate) struct Topics<T> {
    by_topic: HashMap<Arc<str>, BTreeMap<u64, T>>,
}

impl<T: Clone> Topics<T> {
    pub(crate) fn new() -> Self {
        Self {
            by_topic: HashMap::new(),
        }
    }

    /// Adds subscriber `id` to `topic`. True if it is the topic's first subscriber.
    pub(crate) fn subscribe(&mut self, topic: &Arc<str>, id: u64, sub: T) -> bool {
        let subs = self.by_topic.entry(topic.clone()).or_default();
        subs.insert(id, sub);
        subs.len() == 1
    }

    /// Removes subscriber `id` from `topic`. The topic's name if that was its last subscriber
    /// (the topic is then gone from the registry).
    pub(crate) fn unsubscribe(&mut self, topic: &str, id: u64) -> Option<Arc<str>> {
        let subs = self.by_topic.get_mut(topic)?;
        subs.remove(&id);
        if !subs.is_empty() {
            return None;
        }
        self.by_topic.remove_entry(topic).map(|(name, _)| name)
    }

    /// Appends `topic`'s subscribers to `out`, by ascending id.
    pub(crate) fn snapshot(&self, topic: &str, out: &mut Vec<T>) {
        if let Some(subs) = self.by_topic.get(topic) {
            out.extend(subs.values().cloned());
        }
    }

    /// Subscribers of `topic` right now.
    pub(crate) fn count(&self, topic: &str) -> usize {
        self.by_topic.get(topic).map_or(0, |s| s.len())
    }
}

/// The topics one connection is subscribed to. Most connections follow none or a few: up to
/// [`TopicSet::FEW`] are kept in a `Vec` (24 bytes, where an empty `HashSet` takes 48, and one
/// small allocation for the first topics), more in a boxed set, so that a connection following
/// thousands still adds and looks up in constant time.
#[derive(Debug)]
pub(crate) enum TopicSet {
    Few(Vec<Arc<str>>),
    // The box is the point: the enum stays a `Vec`'s size.
    #[allow(clippy::box_collection)]
    Many(Box<HashSet<Arc<str>>>),
}

impl Default for TopicSet {
    fn default() -> Self {
        TopicSet::Few(Vec::new())
    }
}

impl TopicSet {
    /// The most topics kept in the `Vec`.
    pub(crate) const FEW: usize = 8;

    pub(crate) fn contains(&self, topic: &str) -> bool {
        match self {
            TopicSet::Few(v) => v.iter().any(|t| &**t == topic),
            TopicSet::Many(s) => s.contains(topic),
        }
    }

    /// Adds `topic`; false if it was there already.
    pub(crate) fn insert(&mut self, topic: Arc<str>) -> bool {
        if self.contains(&topic) {
            return false;
        }
        match self {
            TopicSet::Few(v) if v.len() < Self::FEW => v.push(topic),
            TopicSet::Few(v) => {
                let mut s: HashSet<Arc<str>> = v.drain(..).collect();
                s.insert(topic);
                *self = TopicSet::Many(Box::new(s));
            }
            TopicSet::Many(s) => {
                s.insert(topic);
            }
        }
        true
    }

    /// Removes `topic`; false if it was not there.
    pub(crate) fn remove(&mut self, topic: &str) -> bool {
        match self {
            TopicSet::Few(v) => match v.iter().position(|t| &**t == topic) {
                Some(i) => {
                    v.swap_remove(i);
                    true
                }
                None => false,
            },
            TopicSet::Many(s) => s.remove(topic),
        }
    }

    /// Every topic, leaving the set empty (and its memory freed).
    pub(crate) fn take_all(&mut self) -> Vec<Arc<str>> {
        match std::mem::take(self) {
            TopicSet::Few(v) => v,
            TopicSet::Many(s) => s.into_iter().collect(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        match self {
            TopicSet::Few(v) => v.len(),
            TopicSet::Many(s) => s.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{TopicSet, Topics};
    use std::sync::Arc;

    #[test]
    fn a_topic_set_keeps_each_topic_once_past_its_few() {
        let mut s = TopicSet::default();
        let names: Vec<Arc<str>> = (0..TopicSet::FEW * 3)
            .map(|i| Arc::from(format!("t{i}")))
            .collect();
        for (i, n) in names.iter().enumerate() {
            assert!(s.insert(n.clone()), "{n} is new");
            assert!(!s.insert(n.clone()), "{n} is there already");
            assert_eq!(s.len(), i + 1);
            assert_eq!(matches!(s, TopicSet::Many(_)), i >= TopicSet::FEW);
        }
        assert!(names.iter().all(|n| s.contains(n)));
        assert!(!s.contains("t-none"));
        assert!(s.remove("t3"));
        assert!(!s.remove("t3"));
        assert!(!s.contains("t3"));
        let mut all: Vec<String> = s.take_all().iter().map(|t| t.to_string()).collect();
        all.sort();
        let mut want: Vec<String> = names
            .iter()
            .map(|t| t.to_string())
            .filter(|t| t != "t3")
            .collect();
        want.sort();
        assert_eq!(all, want);
        assert_eq!(s.len(), 0);
        // Below the few, removal works in the `Vec` too.
        assert!(s.insert(Arc::from("a")) && s.insert(Arc::from("b")));
        assert!(s.remove("a") && !s.contains("a") && s.contains("b"));
    }

    #[test]
    fn first_and_last_subscribers_are_reported_and_empty_topics_go() {
        let mut t = Topics::new();
        let a: Arc<str> = Arc::from("a");
        assert!(t.subscribe(&a, 1, 10));
        assert!(!t.subscribe(&a, 2, 20));
        assert!(!t.subscribe(&a, 2, 21), "again: replaced, not a new first");
        assert_eq!(t.count("a"), 2);
        let mut out = Vec::new();
        t.snapshot("a", &mut out);
        assert_eq!(out, [10, 21]);
        assert_eq!(t.unsubscribe("a", 1), None);
        assert_eq!(t.unsubscribe("a", 9), None, "not a subscriber");
        assert_eq!(t.unsubscribe("a", 2).as_deref(), Some("a"));
        assert_eq!(t.count("a"), 0);
        assert!(t.by_topic.is_empty());
        assert_eq!(t.unsubscribe("a", 2), None, "gone already");
        assert!(t.subscribe(&a, 3, 30), "first again after it emptied");
    }

    #[test]
    fn a_snapshot_lists_subscribers_by_id_whatever_order_they_came_in() {
        let mut t = Topics::new();
        let a: Arc<str> = Arc::from("a");
        for id in [5u64, 1, 9, 3, 7] {
            t.subscribe(&a, id, id * 10);
        }
        t.unsubscribe("a", 9);
        let mut out = Vec::new();
        t.snapshot("a", &mut out);
        assert_eq!(out, [10, 30, 50, 70]);
    }
}
