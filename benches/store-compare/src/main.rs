//! Group-commit append throughput of redb, fjall and SQLite (rusqlite, WAL), as the gateway uses a
//! store: `PRODUCERS` threads each append one event at a time and wait for its commit; one writer
//! takes everything queued, writes it in one transaction, syncs, and answers them all.

use std::sync::mpsc;
use std::time::{Duration, Instant};

const PRODUCERS: usize = 32;
const EVENTS: usize = 40_000;
const EVENT_BYTES: usize = 200;

type Request = (u64, mpsc::Sender<()>);

/// One candidate: writes a batch of (seq, body) durably.
trait Backend: Send {
    fn name(&self) -> &'static str;
    fn commit(&mut self, batch: &[(u64, Vec<u8>)]);
}

struct Redb(redb::Database);
const T: redb::TableDefinition<'static, u64, &[u8]> = redb::TableDefinition::new("events");

impl Backend for Redb {
    fn name(&self) -> &'static str {
        "redb 2 (Durability::Immediate)"
    }
    fn commit(&mut self, batch: &[(u64, Vec<u8>)]) {
        let txn = self.0.begin_write().unwrap();
        {
            let mut t = txn.open_table(T).unwrap();
            for (k, v) in batch {
                t.insert(k, v.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
}

struct Fjall(fjall::Keyspace, fjall::PartitionHandle);

impl Backend for Fjall {
    fn name(&self) -> &'static str {
        "fjall 2 (persist SyncAll)"
    }
    fn commit(&mut self, batch: &[(u64, Vec<u8>)]) {
        let mut b = self.0.batch();
        for (k, v) in batch {
            b.insert(&self.1, k.to_be_bytes(), v.as_slice());
        }
        b.commit().unwrap();
        self.0.persist(fjall::PersistMode::SyncAll).unwrap();
    }
}

struct Sqlite(rusqlite::Connection);

impl Backend for Sqlite {
    fn name(&self) -> &'static str {
        "SQLite (WAL, synchronous=FULL)"
    }
    fn commit(&mut self, batch: &[(u64, Vec<u8>)]) {
        let txn = self.0.transaction().unwrap();
        {
            let mut s = txn.prepare_cached("INSERT INTO events (seq, body) VALUES (?1, ?2)").unwrap();
            for (k, v) in batch {
                s.execute(rusqlite::params![*k as i64, v]).unwrap();
            }
        }
        txn.commit().unwrap();
    }
}

fn run(mut backend: Box<dyn Backend>) -> (f64, f64) {
    let (tx, rx) = mpsc::channel::<Request>();
    let start = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in 0..EVENTS / PRODUCERS {
                    let (done, wait) = mpsc::channel();
                    tx.send(((p * EVENTS + i) as u64, done)).unwrap();
                    wait.recv().unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let body = vec![b'x'; EVENT_BYTES];
    let mut commits = 0u64;
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let batch: Vec<(u64, Vec<u8>)> = waiting.iter().map(|(k, _)| (*k, body.clone())).collect();
        backend.commit(&batch);
        commits += 1;
        for (_, done) in waiting {
            let _ = done.send(());
        }
    }
    for p in producers {
        p.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    (EVENTS as f64 / secs, EVENTS as f64 / commits as f64)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let redb = redb::Database::create(dir.path().join("r.redb")).unwrap();
    let keyspace = fjall::Config::new(dir.path().join("fjall")).open().unwrap();
    let part = keyspace.open_partition("events", Default::default()).unwrap();
    let sqlite = rusqlite::Connection::open(dir.path().join("s.sqlite")).unwrap();
    sqlite
        .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE events (seq INTEGER PRIMARY KEY, body BLOB);")
        .unwrap();
    let backends: Vec<Box<dyn Backend>> = vec![Box::new(Redb(redb)), Box::new(Fjall(keyspace, part)), Box::new(Sqlite(sqlite))];
    println!("{PRODUCERS} producers, {EVENTS} events of {EVENT_BYTES} bytes, one synced commit per batch");
    for b in backends {
        let name = b.name();
        let (rate, per_commit) = run(b);
        println!("{name:34} {rate:>9.0} events/s  ({per_commit:.1} events per commit)");
        std::thread::sleep(Duration::from_millis(200));
    }
}
