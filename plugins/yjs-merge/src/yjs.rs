//! The live Yjs document (pure logic, tested natively).
//!
//! One `yrs::Doc` per document for its whole life: `apply` integrates one
//! update in one transaction and never re-encodes the document. Every input
//! passes [`v1`]'s structural check before yrs decodes it.
//!
//! What `apply` broadcasts: the incoming update, byte for byte, when it changed
//! the document — it integrated an item, deleted a live one, or changed what is
//! pending (an update whose dependencies have not arrived is kept by yrs, is
//! part of every snapshot and diff, and is integrated once they arrive; peers
//! need it too, so it is broadcast when first seen). Otherwise `None`: already
//! applied, deletes of deleted items, the empty update, a pending update sent
//! again. Replicas apply the same updates in the same order, so they hold the
//! same state (yrs is deterministic and this document never writes itself).

use switchyard_sdk::MergeError;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, IdSet, Options, ReadTxn, StateVector, Transact, Update};

use crate::v1;

/// Client id of the gateway-side replica. It never writes, so the id is never
/// used (a client may even have the same one); fixed so that no randomness is
/// involved.
const REPLICA_CLIENT_ID: u64 = 0x5_77C4;

/// The document.
pub struct Yjs {
    doc: Doc,
    max_update_bytes: usize,
}

/// What yrs keeps aside until dependencies arrive: the ids of the pending
/// blocks and what they wait for, and the pending deletes.
type Pending = (Option<(StateVector, IdSet)>, Option<IdSet>);

fn pending<T: ReadTxn>(txn: &T) -> Pending {
    let store = txn.store();
    (
        store
            .pending_update()
            .map(|p| (p.missing.clone(), p.update.insertions(true))),
        store.pending_ds().cloned(),
    )
}

fn decode(bytes: &[u8], what: &str) -> Result<Update, MergeError> {
    v1::check_update(bytes).map_err(|e| MergeError::Invalid(format!("{what}: {e}")))?;
    Update::decode_v1(bytes).map_err(|e| MergeError::Invalid(format!("{what}: {e}")))
}

impl Yjs {
    /// From a snapshot (a v1 update of the whole document; empty = new).
    pub fn open(snapshot: &[u8], max_update_bytes: usize) -> Result<Self, MergeError> {
        let mut options = Options::with_guid_and_client_id(
            "switchyard-yjs-merge".into(),
            ClientID::new(REPLICA_CLIENT_ID),
        );
        options.skip_gc = false;
        let d = Self {
            doc: Doc::with_options(options),
            max_update_bytes,
        };
        if !snapshot.is_empty() {
            let update = decode(snapshot, "snapshot")?;
            d.doc
                .transact_mut()
                .apply_update(update)
                .map_err(|e| MergeError::Invalid(format!("snapshot: {e}")))?;
        }
        Ok(d)
    }

    /// Merges a v1 update; returns it when it changed the document.
    pub fn apply(&mut self, update: &[u8]) -> Result<Option<Vec<u8>>, MergeError> {
        if update.len() > self.max_update_bytes {
            return Err(MergeError::Invalid(format!(
                "update of {} bytes is over max_update_bytes ({})",
                update.len(),
                self.max_update_bytes
            )));
        }
        let decoded = decode(update, "update")?;
        if decoded.is_empty() {
            return Ok(None);
        }
        let mut txn = self.doc.transact_mut();
        let before = pending(&txn);
        let result = txn.apply_update(decoded);
        let changed = txn.has_changes() || pending(&txn) != before;
        drop(txn);
        match result {
            Ok(()) => Ok(changed.then(|| update.to_vec())),
            // Well-formed but not integrable (e.g. a parent that is not a
            // shared type). yrs has no rollback: if part of it went in, the
            // gateway must rebuild the document from its snapshot and log.
            Err(e) if changed => Err(MergeError::Other(format!(
                "update refused after a partial merge, the document must be reopened: {e}"
            ))),
            Err(e) => Err(MergeError::Invalid(format!("update: {e}"))),
        }
    }

    /// The whole document, pending updates included, as one v1 update.
    pub fn snapshot(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// The v1-encoded state vector.
    pub fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }

    /// What a peer with `state_vector` lacks, as one v1 update (an empty
    /// state vector = everything).
    pub fn diff(&self, state_vector: &[u8]) -> Result<Vec<u8>, MergeError> {
        let sv = if state_vector.is_empty() {
            StateVector::default()
        } else {
            v1::check_state_vector(state_vector)
                .map_err(|e| MergeError::Invalid(format!("state vector: {e}")))?;
            StateVector::decode_v1(state_vector)
                .map_err(|e| MergeError::Invalid(format!("state vector: {e}")))?
        };
        Ok(self.doc.transact().encode_state_as_update_v1(&sv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, Map, Text, TextRef};

    const MIB: usize = 1 << 20;

    /// A client-side replica, as a browser running Yjs would hold.
    struct Client {
        doc: Doc,
        text: TextRef,
    }

    impl Client {
        fn new(id: u64) -> Self {
            let doc = Doc::with_client_id(id);
            let text = doc.get_or_insert_text("t");
            Self { doc, text }
        }

        fn insert(&self, at: u32, s: &str) -> Vec<u8> {
            let mut txn = self.doc.transact_mut();
            self.text.insert(&mut txn, at, s);
            txn.encode_update_v1()
        }

        fn remove(&self, at: u32, len: u32) -> Vec<u8> {
            let mut txn = self.doc.transact_mut();
            self.text.remove_range(&mut txn, at, len);
            txn.encode_update_v1()
        }

        fn receive(&self, update: &[u8]) {
            let u = Update::decode_v1(update).unwrap();
            self.doc.transact_mut().apply_update(u).unwrap();
        }

        fn string(&self) -> String {
            self.text.get_string(&self.doc.transact())
        }
    }

    /// The text "t" of a plugin document, read through a fresh client.
    fn text_of(d: &Yjs) -> String {
        let c = Client::new(99);
        c.receive(&d.snapshot());
        c.string()
    }

    /// Two documents hold the same items and deletes.
    fn assert_same(a: &mut Yjs, b: &mut Yjs) {
        let sv = |d: &Yjs| StateVector::decode_v1(&d.state_vector()).unwrap();
        assert_eq!(sv(a), sv(b));
        assert_eq!(a.apply(&b.snapshot()).unwrap(), None);
        assert_eq!(b.apply(&a.snapshot()).unwrap(), None);
    }

    fn new_doc() -> Yjs {
        Yjs::open(b"", MIB).unwrap()
    }

    fn invalid<T>(r: Result<T, MergeError>) -> bool {
        matches!(r, Err(MergeError::Invalid(_)))
    }

    /// xorshift64*: a small deterministic PRNG.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Concurrent edits by two clients on a shared base; returns the updates
    /// in causal order per client.
    fn concurrent_edits() -> (Vec<u8>, Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let a = Client::new(1);
        let b = Client::new(2);
        let base = a.insert(0, "hello world");
        b.receive(&base);
        let ua = vec![a.insert(5, ", dear"), a.remove(0, 1), a.insert(0, "H")];
        let ub = vec![b.insert(11, "!"), b.remove(6, 5), b.insert(6, "there")];
        (base, ua, ub)
    }

    #[test]
    fn concurrent_edits_converge_whatever_the_order() {
        let (base, ua, ub) = concurrent_edits();
        let orders: Vec<Vec<&Vec<u8>>> = vec![
            std::iter::once(&base).chain(&ua).chain(&ub).collect(),
            std::iter::once(&base).chain(&ub).chain(&ua).collect(),
            vec![&base, &ua[0], &ub[0], &ua[1], &ub[1], &ua[2], &ub[2]],
            // Reversed: everything waits for `base`, then integrates at once.
            ub.iter()
                .rev()
                .chain(ua.iter().rev())
                .chain([&base])
                .collect(),
        ];
        let mut results = Vec::new();
        for order in &orders {
            let mut d = new_doc();
            for u in order {
                assert_eq!(d.apply(u).unwrap().as_ref(), Some(*u), "broadcast as-is");
            }
            results.push(d);
        }
        let expected = text_of(&results[0]);
        assert!(expected.starts_with("Hello, dear"), "{expected}");
        let mut first = new_doc();
        first.apply(&results[0].snapshot()).unwrap();
        for d in &mut results {
            assert_eq!(text_of(d), expected);
            assert_same(d, &mut first);
        }
        // The same order on two replicas (the gateway's case): the same bytes
        // (but for the key order of `Any` maps, which yrs does not fix).
        let mut again = new_doc();
        for u in &orders[2] {
            again.apply(u).unwrap();
        }
        assert_eq!(again.snapshot(), results[2].snapshot());
        // The clients converge with the gateway too.
        let a = Client::new(3);
        a.receive(&results[3].snapshot());
        assert_eq!(a.string(), expected);
    }

    #[test]
    fn no_change_no_broadcast() {
        let c = Client::new(7);
        let u1 = c.insert(0, "abc");
        let mut d = new_doc();
        assert_eq!(d.apply(&u1).unwrap(), Some(u1.clone()));
        assert_eq!(d.apply(&u1).unwrap(), None, "repeated");
        assert_eq!(d.apply(&[0, 0]).unwrap(), None, "empty update");
        assert_eq!(d.apply(&d.snapshot()).unwrap(), None, "own snapshot");
        let del = c.remove(1, 1);
        assert_eq!(d.apply(&del).unwrap(), Some(del.clone()));
        assert_eq!(d.apply(&del).unwrap(), None, "deleting a deleted item");
        assert_eq!(text_of(&d), "ac");
        // A merged update of known items and one new item broadcasts.
        let u2 = c.insert(2, "d");
        let merged = yrs::merge_updates_v1([u1.as_slice(), u2.as_slice()]).unwrap();
        assert_eq!(d.apply(&merged).unwrap(), Some(merged.clone()));
        assert_eq!(d.apply(&u2).unwrap(), None);
        assert_eq!(text_of(&d), "acd");
    }

    #[test]
    fn pending_updates_are_broadcast_once_and_kept() {
        let c = Client::new(8);
        let u1 = c.insert(0, "ab");
        let u2 = c.insert(2, "cd");
        let u3 = c.remove(0, 1);
        let mut d = new_doc();
        assert_eq!(
            d.apply(&u2).unwrap(),
            Some(u2.clone()),
            "pending: broadcast"
        );
        assert_eq!(d.apply(&u2).unwrap(), None, "the same pending update again");
        assert_eq!(d.apply(&u3).unwrap(), Some(u3.clone()), "pending delete");
        assert_eq!(d.apply(&u3).unwrap(), None);
        assert_eq!(text_of(&d), "", "nothing visible yet");
        // A replica opened from the snapshot keeps what is pending.
        let mut e = Yjs::open(&d.snapshot(), MIB).unwrap();
        for doc in [&mut d, &mut e] {
            assert_eq!(doc.apply(&u1).unwrap(), Some(u1.clone()));
            assert_eq!(text_of(doc), "bcd");
        }
        assert_eq!(d.state_vector(), e.state_vector());
    }

    #[test]
    fn diff_brings_a_peer_up_to_date() {
        let a = Client::new(1);
        let b = Client::new(2);
        let mut d = new_doc();
        let first = a.insert(0, "one ");
        d.apply(&first).unwrap();
        b.receive(&first);
        let old_sv = b.doc.transact().state_vector().encode_v1();
        for u in [a.insert(4, "two "), a.remove(0, 4), a.insert(4, "three")] {
            d.apply(&u).unwrap();
        }
        let diff = d.diff(&old_sv).unwrap();
        assert!(diff.len() < d.snapshot().len() + 8);
        b.receive(&diff);
        assert_eq!(b.string(), "two three");
        assert_eq!(b.string(), text_of(&d));
        // Up to date: the diff changes nothing.
        let sv = d.state_vector();
        assert_eq!(d.apply(&d.diff(&sv).unwrap()).unwrap(), None);
        // An empty state vector asks for everything.
        let c = Client::new(3);
        c.receive(&d.diff(b"").unwrap());
        assert_eq!(c.string(), "two three");
        for bad in [&[1u8][..], &[2, 1], &[0, 0], &[0xff; 12]] {
            assert!(invalid(d.diff(bad)), "{bad:?}");
        }
    }

    #[test]
    fn snapshot_reopens_to_the_same_document() {
        let a = Client::new(5);
        let mut d = new_doc();
        for u in [a.insert(0, "snap"), a.insert(4, "shot"), a.remove(0, 4)] {
            d.apply(&u).unwrap();
        }
        let map = a.doc.get_or_insert_map("m");
        let u = {
            let mut txn = a.doc.transact_mut();
            map.insert(&mut txn, "k", yrs::Any::from(vec![1, 2, 3]));
            txn.encode_update_v1()
        };
        d.apply(&u).unwrap();
        let e = Yjs::open(&d.snapshot(), MIB).unwrap();
        assert_eq!(e.snapshot(), d.snapshot());
        assert_eq!(e.state_vector(), d.state_vector());
        assert_eq!(text_of(&e), "shot");
        assert_eq!(Yjs::open(&[0, 0], MIB).unwrap().snapshot(), [0, 0]);
        assert_eq!(new_doc().snapshot(), [0, 0]);
        assert_eq!(new_doc().state_vector(), [0]);
        for bad in [&b"garbage"[..], &[1], &[0, 0, 0]] {
            assert!(invalid(Yjs::open(bad, MIB)), "{bad:?}");
        }
    }

    #[test]
    fn oversized_updates_are_refused() {
        let c = Client::new(4);
        let u = c.insert(0, &"x".repeat(100));
        let mut d = Yjs::open(b"", 64).unwrap();
        assert!(invalid(d.apply(&u)));
        assert_eq!(d.snapshot(), [0, 0], "unchanged");
        let small = c.insert(0, "y");
        assert!(small.len() <= 64);
        assert!(
            d.apply(&small).unwrap().is_some(),
            "pending behind the big one"
        );
    }

    /// Applies `input` to `d`; a panic is returned as an error string.
    fn guarded(d: &mut Yjs, input: &[u8]) -> Result<Result<Option<Vec<u8>>, MergeError>, String> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.apply(input))).map_err(|p| {
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default()
        })
    }

    /// A document with some content and a valid update to mangle.
    fn mangle_base() -> (Yjs, Vec<u8>) {
        let (base, ua, ub) = concurrent_edits();
        let mut d = new_doc();
        d.apply(&base).unwrap();
        d.apply(&ua[0]).unwrap();
        let c = Client::new(9);
        c.receive(&d.snapshot());
        let map = c.doc.get_or_insert_map("m");
        let mut txn = c.doc.transact_mut();
        c.text.insert(&mut txn, 3, "new text");
        c.text.remove_range(&mut txn, 0, 2);
        map.insert(
            &mut txn,
            "k",
            yrs::Any::from(vec![yrs::Any::from("v"), 1.5.into()]),
        );
        let u = txn.encode_update_v1();
        drop(txn);
        let merged = yrs::merge_updates_v1([u.as_slice(), ub[0].as_slice()]).unwrap();
        (d, merged)
    }

    #[test]
    fn truncated_and_garbage_updates_are_invalid() {
        let (mut d, good) = mangle_base();
        let before = d.snapshot();
        for n in 0..good.len() {
            let r = guarded(&mut d, &good[..n]).unwrap();
            assert!(invalid(r), "prefix of {n} bytes");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(invalid(d.apply(&trailing)));
        for bad in [&b"garbage"[..], b"{\"a\":1}", &[0xff; 16], &[0], &[0, 0, 0]] {
            assert!(invalid(d.apply(bad)), "{bad:?}");
        }
        assert_eq!(d.snapshot(), before, "nothing refused changed the document");
        assert!(d.apply(&good).unwrap().is_some());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut d = mangle_base().0;
        let mut accepted = 0;
        for _ in 0..5000 {
            let len = rng.below(48);
            let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            match guarded(&mut d, &input) {
                Err(p) => panic!("panicked on {input:?}: {p}"),
                Ok(Err(MergeError::Invalid(_))) => {}
                Ok(Ok(_)) => accepted += 1,
                Ok(Err(e)) => panic!("{input:?}: {e:?}"),
            }
        }
        // Only the rare well-formed ones (e.g. `[0, 0]`) get through.
        assert!(accepted < 50, "{accepted}");
    }

    #[test]
    fn mutated_updates_never_panic() {
        let (d0, good) = mangle_base();
        let snapshot = d0.snapshot();
        let mut rng = Rng(42);
        let mut panics = Vec::new();
        let mut accepted = 0;
        for i in 0..3000 {
            let mut input = good.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(input.len());
                match rng.below(4) {
                    0 => input[at] ^= 1 << rng.below(8),
                    1 => input[at] = rng.next() as u8,
                    2 => {
                        input.remove(at);
                    }
                    _ => input.insert(at, rng.next() as u8),
                }
            }
            let mut d = Yjs::open(&snapshot, MIB).unwrap();
            match guarded(&mut d, &input) {
                Err(p) => panics.push(format!("#{i} {input:?}: {p}")),
                // Whatever is accepted must survive a reopen from the snapshot.
                Ok(Ok(Some(_))) => {
                    accepted += 1;
                    let mut e = Yjs::open(&d.snapshot(), MIB)
                        .unwrap_or_else(|err| panic!("#{i} {input:?}: reopen: {err:?}"));
                    let diff = d.diff(&[0]).unwrap();
                    assert_eq!(e.apply(&diff).unwrap(), None, "#{i}");
                }
                Ok(_) => {}
            }
        }
        assert!(accepted > 100, "{accepted} mutations accepted");
        assert!(
            panics.is_empty(),
            "{} panics:\n{}",
            panics.len(),
            panics.join("\n")
        );
    }

    #[test]
    fn a_parent_that_is_not_a_type_is_refused() {
        let c = Client::new(5);
        let mut d = new_doc();
        d.apply(&c.insert(0, "ab")).unwrap();
        let before = d.snapshot();
        // Client 6 inserts "x" into the item (5, 0), a string.
        let bad = [1, 1, 6, 0, 4, 0, 5, 0, 1, b'x', 0];
        assert!(invalid(d.apply(&bad)), "{:?}", d.apply(&bad));
        assert_eq!(d.snapshot(), before);
        // With a good item of client 7 integrated before it: yrs cannot roll
        // that back, so the error asks the gateway to rebuild the document.
        let partial = [
            2, 1, 7, 0, 4, 1, 1, b't', 1, b'y', 1, 6, 0, 4, 0, 5, 0, 1, b'x', 0,
        ];
        assert!(
            matches!(d.apply(&partial), Err(MergeError::Other(_))),
            "{:?}",
            d.apply(&partial)
        );
    }

    #[test]
    fn yrs_misreads_legacy_json_content() {
        // What Yjs writes for ContentJSON `[1]` in the root array "a": yrs
        // 0.28 reads one string more than the count, so it fails (or, with
        // bytes after it, misreads them); the check refuses it up front.
        let bytes = [1, 1, 1, 0, 2, 1, 1, b'a', 1, 1, b'1', 0];
        assert!(Update::decode_v1(&bytes).is_err());
        assert!(
            v1::check_update(&bytes)
                .unwrap_err()
                .contains("legacy JSON")
        );
    }

    mod js {
        include!("../testdata/yjs-13.6.33.rs");
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn updates_written_by_yjs() {
        let mut d = new_doc();
        for u in js::A_UPDATES.iter().map(|h| unhex(h)) {
            assert_eq!(d.apply(&u).unwrap(), Some(u));
        }
        let snap_a = unhex(js::SNAPSHOT_A);
        assert_eq!(d.apply(&snap_a).unwrap(), None, "Yjs' own snapshot: known");
        // The same state, though not the same bytes: yrs keeps the keys of an
        // `Any` map in a std `HashMap` (random order per map).
        let mut from_js = Yjs::open(&snap_a, MIB).unwrap();
        assert_same(&mut from_js, &mut d);
        let mut reopened = Yjs::open(&d.snapshot(), MIB).unwrap();
        assert_same(&mut reopened, &mut d);
        for u in js::B_UPDATES.iter().map(|h| unhex(h)) {
            assert_eq!(d.apply(&u).unwrap(), Some(u.clone()));
            assert_eq!(d.apply(&u).unwrap(), None);
        }
        assert_eq!(text_of(&d), ">> Hello wörld 😀");
        // Yjs' peer A catches up from the gateway's diff against its state vector.
        let a = Client::new(1);
        a.receive(&snap_a);
        a.receive(&d.diff(&unhex(js::SV_A)).unwrap());
        let txn = a.doc.transact();
        assert_eq!(a.text.get_string(&txn), ">> Hello wörld 😀");
        let m = txn.get_map("m").unwrap();
        assert!(m.get(&txn, "bin").is_none(), "deleted by B");
        let Some(yrs::Out::Any(yrs::Any::Map(k))) = m.get(&txn, "k") else {
            panic!("m.k")
        };
        assert_eq!(k.get("big"), Some(&yrs::Any::from(1_099_511_627_776i64)));
        let x = txn.get_xml_fragment("x").unwrap();
        assert_eq!(x.get_string(&txn), r#"<p class="c"><bold>bold</bold></p>"#);
        // Y.XmlHook carries a name yrs 0.28 neither reads nor writes (it takes
        // the name's bytes for a delete set), so its snapshot would not be
        // Yjs' any more: refused up front.
        let hook = unhex(js::XML_HOOK);
        let raw = Doc::new();
        let hook_update = Update::decode_v1(&hook).unwrap();
        raw.transact_mut().apply_update(hook_update).unwrap();
        let reencoded = raw
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert_eq!(reencoded, [1, 1, 3, 0, 7, 1, 1, b'x', 5, 0], "no name");
        assert!(invalid(d.apply(&hook)));
    }

    #[test]
    fn shapes_that_break_yrs_are_refused() {
        let mut deep = vec![1, 1, 1, 0, 8, 1, 1, b'a', 1];
        for _ in 0..100_000 {
            deep.extend([117, 1]);
        }
        deep.extend([126, 0]);
        let cases: [(&str, Vec<u8>); 8] = [
            // A stack overflow (an abort, not a panic) in yrs' Any decoder.
            ("Any nested 100000 deep", deep),
            // Overflow panics in a debug build, wrapped clocks in a release one.
            (
                "clock 2^31",
                vec![
                    1, 1, 1, 0x80, 0x80, 0x80, 0x80, 0x08, 4, 1, 1, b't', 1, b'x', 0,
                ],
            ),
            (
                "clock past u32",
                vec![
                    1, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 4, 1, 1, b't', 2, b'x', b'y', 0,
                ],
            ),
            (
                "delete past u32",
                vec![0, 1, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 5],
            ),
            (
                "signed varint of 11 bytes",
                vec![
                    1, 1, 1, 0, 8, 1, 1, b'a', 1, 125, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0xff, 0xff, 0xff, 0x01, 0,
                ],
            ),
            // yrs keeps 53 bits of a client id (a debug assertion, else aliasing).
            (
                "client 2^53",
                vec![
                    1, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 4, 1, 1, b't', 1,
                    b'x', 0,
                ],
            ),
            // 2^31 array elements declared in 5 bytes.
            (
                "allocation bomb",
                vec![
                    1, 1, 1, 0, 8, 1, 1, b'a', 1, 117, 0x80, 0x80, 0x80, 0x80, 0x08, 0,
                ],
            ),
            (
                "client twice",
                vec![
                    2, 1, 1, 5, 4, 1, 1, b't', 1, b'x', 1, 1, 0, 4, 1, 1, b't', 1, b'y', 0,
                ],
            ),
        ];
        let mut d = Yjs::open(b"", usize::MAX).unwrap();
        for (what, bytes) in cases {
            assert!(invalid(guarded(&mut d, &bytes).unwrap()), "{what}");
        }
        assert_eq!(d.snapshot(), [0, 0]);
    }

    #[test]
    fn deep_values_up_to_the_limit() {
        let mut deep = vec![1, 1, 1, 0, 8, 1, 1, b'a', 1];
        for _ in 1..v1::MAX_DEPTH {
            deep.extend([117, 1]);
        }
        deep.extend([126, 0]);
        let mut d = new_doc();
        assert!(d.apply(&deep).unwrap().is_some());
        let e = Yjs::open(&d.snapshot(), MIB).unwrap();
        assert_eq!(e.snapshot(), d.snapshot());
    }
}
