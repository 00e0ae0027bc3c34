//! Many clients at once: exactly one wins each lock.

use crate::support::{TestServer, holder_of, lock_files};
use std::sync::{Arc, Barrier};

#[test]
fn of_24_contending_clients_exactly_one_wins() {
    const CLIENTS: usize = 24;
    let server = TestServer::start();
    for round in 0..5 {
        let resource = format!("contended-{round}");
        let barrier = Arc::new(Barrier::new(CLIENTS));
        let threads: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (client, barrier, resource) =
                    (server.client(), barrier.clone(), resource.clone());
                std::thread::spawn(move || {
                    let me = format!("client{i}");
                    barrier.wait();
                    let params = [resource.as_str().into(), me.as_str().into()];
                    (me, client.call("lock", &params))
                })
            })
            .collect();
        let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<_> = outcomes.iter().filter(|(_, r)| r.is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        let winner = &winners[0].0;
        for (_, outcome) in outcomes.iter().filter(|(_, r)| r.is_err()) {
            let Err(lockd::client::CallError::Fault(fault)) = outcome else {
                panic!("{outcome:?}");
            };
            assert_eq!(
                fault.message,
                format!("Resource already locked by '{winner}'")
            );
        }
        let on_disk = std::fs::read_to_string(server.dir.join(format!("{resource}.resource.lock")));
        assert_eq!(holder_of(&on_disk.unwrap()), winner);
    }
}

#[test]
fn concurrent_clients_on_distinct_resources_all_succeed() {
    let server = TestServer::start();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let client = server.client();
            std::thread::spawn(move || {
                for k in 0..20 {
                    let params = [format!("r{i}-{k}").into(), format!("c{i}").into()];
                    client.call("lock", &params).unwrap();
                    client.call("unlock", &params).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(lock_files(&server.dir).len(), 0);
}
