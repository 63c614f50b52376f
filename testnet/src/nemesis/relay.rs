//! The links between replicas, as a relay the nemesis controls: it cuts them (partitions,
//! one-way cuts) and delays them (the kernel here has no netem).
//!
//! For every pair of replicas i < j the relay holds two UDP sockets: `address(i, j)`, where
//! replica i's configuration says j is, and `address(j, i)`, where j's says i is. A datagram
//! from i arriving at `address(i, j)` leaves from `address(j, i)` for j's real address, so j
//! sees it come from where its configuration says i is, and j's answers travel back the same
//! way. Each direction of each link can be cut or delayed on its own. Clients reach the
//! replicas directly.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;

/// Datagrams waiting out their delay, per direction of a link; more are dropped, as a full
/// queue of a real link would.
const DELAYED_PER_LINK: usize = 4096;

/// What the links do now: which directed links are cut, and the one-way delay of every link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkFaults {
    /// `(from, to)`: datagrams from replica `from` to replica `to` are dropped.
    pub cut: BTreeSet<(usize, usize)>,
    /// Added to every datagram between two replicas.
    pub delay: Duration,
}

impl LinkFaults {
    /// No cut and no delay.
    pub fn healed() -> LinkFaults {
        LinkFaults::default()
    }

    /// Cuts both directions between every replica of `side` and every one outside it, for a
    /// cluster of `n`.
    pub fn isolate(&mut self, side: &BTreeSet<usize>, n: usize) {
        for &a in side {
            for b in (0..n).filter(|b| !side.contains(b)) {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }
}

/// Where a relay on `ip` serves the link from replica i to replica j of a cluster of `n`, when
/// its ports must be known before it starts: `base + i * n + j`.
pub fn fixed_table(ip: IpAddr, n: usize, base: u16) -> Result<Vec<Vec<SocketAddr>>, String> {
    let last = u32::from(base) + (n * n) as u32;
    if last > u32::from(u16::MAX) {
        return Err(format!(
            "the relay of {n} replicas needs {} ports from {base}",
            n * n
        ));
    }
    Ok((0..n)
        .map(|i| {
            (0..n)
                .map(|j| SocketAddr::new(ip, base + (i * n + j) as u16))
                .collect()
        })
        .collect())
}

/// A relay's addresses and its replicas', as `testnet compose --relay` writes them for
/// `testnet relay`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayConfig {
    /// `links[i][j]`: where replica i's configuration lists replica j.
    pub links: Vec<Vec<SocketAddr>>,
    /// The replicas' own addresses, by id.
    pub replicas: Vec<SocketAddr>,
}

/// The running relay; dropping it stops it.
pub struct Relay {
    addresses: Vec<Vec<SocketAddr>>,
    /// The replicas' real addresses, known once the cluster's ports are chosen.
    targets: Arc<OnceLock<Vec<SocketAddr>>>,
    faults: Arc<Mutex<LinkFaults>>,
    _tasks: JoinSet<()>,
}

impl Relay {
    /// Binds the sockets of every link of a cluster of `n` on `ip`, on free ports. Nothing is
    /// forwarded until [`Relay::set_targets`].
    pub async fn bind(ip: IpAddr, n: usize) -> std::io::Result<Relay> {
        Relay::bind_at(vec![vec![SocketAddr::new(ip, 0); n]; n]).await
    }

    /// Binds `table[i][j]` (`i != j`; port 0 picks a free one) for the link from replica i to
    /// replica j. Nothing is forwarded until [`Relay::set_targets`].
    pub async fn bind_at(mut addresses: Vec<Vec<SocketAddr>>) -> std::io::Result<Relay> {
        let n = addresses.len();
        let mut sockets: Vec<Vec<Option<Arc<UdpSocket>>>> = vec![vec![None; n]; n];
        for (i, row) in sockets.iter_mut().enumerate() {
            for (j, slot) in row.iter_mut().enumerate() {
                if i != j {
                    let socket = UdpSocket::bind(addresses[i][j]).await?;
                    addresses[i][j] = socket.local_addr()?;
                    *slot = Some(Arc::new(socket));
                }
            }
        }
        let targets = Arc::new(OnceLock::new());
        let faults = Arc::new(Mutex::new(LinkFaults::healed()));
        let mut tasks = JoinSet::new();
        let links = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)));
        for (i, j) in links {
            let direction = Direction {
                from: i,
                to: j,
                inbound: sockets[i][j].clone().expect("bound above"),
                outbound: sockets[j][i].clone().expect("bound above"),
                targets: targets.clone(),
                faults: faults.clone(),
            };
            tasks.spawn(direction.run());
        }
        Ok(Relay {
            addresses,
            targets,
            faults,
            _tasks: tasks,
        })
    }

    /// Where replica `from`'s configuration must say replica `to` is.
    pub fn address(&self, from: usize, to: usize) -> SocketAddr {
        self.addresses[from][to]
    }

    /// Every replica's view of the others: row `i` is what replica i's configuration lists
    /// (its own entry is left for the caller to fill).
    pub fn table(&self) -> Vec<Vec<SocketAddr>> {
        self.addresses.clone()
    }

    /// The shared cell [`Relay::set_targets`] fills, for code that learns the addresses later.
    pub fn targets(&self) -> Arc<OnceLock<Vec<SocketAddr>>> {
        self.targets.clone()
    }

    /// The replicas' real addresses, by id. Only the first call counts.
    pub fn set_targets(&self, addresses: Vec<SocketAddr>) {
        let _ = self.targets.set(addresses);
    }

    /// Makes the links behave as `faults` says, from now on.
    pub fn set(&self, faults: LinkFaults) {
        *self.faults.lock().expect("relay faults lock") = faults;
    }

    /// What the links do now.
    pub fn faults(&self) -> LinkFaults {
        self.faults.lock().expect("relay faults lock").clone()
    }
}

/// Runs the relay `path` describes, with `delay` on every link, until Ctrl-C or SIGTERM.
pub async fn run_from_file(
    path: &std::path::Path,
    delay: Duration,
) -> Result<(), crate::launcher::LaunchError> {
    use crate::launcher::LaunchError;
    let text = std::fs::read_to_string(path)
        .map_err(|e| LaunchError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let config: RelayConfig = toml::from_str(&text)
        .map_err(|e| LaunchError::Usage(format!("{} is not a relay file: {e}", path.display())))?;
    let n = config.replicas.len();
    if config.links.len() != n || config.links.iter().any(|row| row.len() != n) {
        return Err(LaunchError::Usage(format!(
            "{}: `links` must have {n} rows of {n}",
            path.display()
        )));
    }
    let relay = Relay::bind_at(config.links.clone()).await.map_err(|e| {
        LaunchError::Failure(format!(
            "cannot bind the relay's ports (is the cluster's network up?): {e}"
        ))
    })?;
    relay.set_targets(config.replicas.clone());
    relay.set(LinkFaults {
        delay,
        ..LinkFaults::healed()
    });
    println!(
        "relaying the {} links between {n} replicas with {delay:?} one way; Ctrl-C stops",
        n * (n - 1)
    );
    crate::launcher::shutdown_signal().await;
    Ok(())
}

/// One direction of one link: from replica `from` (arriving on `inbound`) to replica `to`
/// (leaving from `outbound`).
struct Direction {
    from: usize,
    to: usize,
    inbound: Arc<UdpSocket>,
    outbound: Arc<UdpSocket>,
    targets: Arc<OnceLock<Vec<SocketAddr>>>,
    faults: Arc<Mutex<LinkFaults>>,
}

impl Direction {
    async fn run(self) {
        let waiting = Arc::new(tokio::sync::Semaphore::new(DELAYED_PER_LINK));
        let mut buffer = vec![0u8; 65_536];
        loop {
            let Ok((len, source)) = self.inbound.recv_from(&mut buffer).await else {
                continue;
            };
            let Some(targets) = self.targets.get() else {
                continue;
            };
            // Only the replica this socket serves may use it.
            if source != targets[self.from] {
                continue;
            }
            let (cut, delay) = {
                let faults = self.faults.lock().expect("relay faults lock");
                (faults.cut.contains(&(self.from, self.to)), faults.delay)
            };
            if cut {
                continue;
            }
            let destination = targets[self.to];
            if delay.is_zero() {
                let _ = self.outbound.send_to(&buffer[..len], destination).await;
                continue;
            }
            let Ok(permit) = waiting.clone().try_acquire_owned() else {
                continue;
            };
            let datagram = buffer[..len].to_vec();
            let outbound = self.outbound.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = outbound.send_to(&datagram, destination).await;
                drop(permit);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    async fn exchange(from: &UdpSocket, to: &UdpSocket, via: SocketAddr) -> Option<SocketAddr> {
        from.send_to(b"ping", via).await.unwrap();
        let mut buffer = [0u8; 16];
        let received = tokio::time::timeout(Duration::from_secs(2), to.recv_from(&mut buffer));
        match received.await {
            Ok(Ok((4, source))) => Some(source),
            _ => None,
        }
    }

    #[tokio::test]
    async fn links_forward_cut_one_way_and_heal() {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let relay = Relay::bind(localhost, 3).await.unwrap();
        let mut replicas = Vec::new();
        for _ in 0..3 {
            replicas.push(UdpSocket::bind((localhost, 0)).await.unwrap());
        }
        let real = replicas.iter().map(|s| s.local_addr().unwrap()).collect();
        relay.set_targets(real);
        // Replica 1 sees replica 0's datagram come from where its configuration lists 0.
        let source = exchange(&replicas[0], &replicas[1], relay.address(0, 1)).await;
        assert_eq!(source, Some(relay.address(1, 0)));
        // A stranger cannot use the link.
        let stranger = UdpSocket::bind((localhost, 0)).await.unwrap();
        assert_eq!(
            exchange(&stranger, &replicas[1], relay.address(0, 1)).await,
            None
        );

        let mut faults = LinkFaults::healed();
        faults.cut.insert((0, 1));
        relay.set(faults);
        assert_eq!(
            exchange(&replicas[0], &replicas[1], relay.address(0, 1)).await,
            None
        );
        let back = exchange(&replicas[1], &replicas[0], relay.address(1, 0)).await;
        assert_eq!(back, Some(relay.address(0, 1)));

        let mut halves = LinkFaults::healed();
        halves.isolate(&BTreeSet::from([2]), 3);
        relay.set(halves);
        assert!(exchange(&replicas[0], &replicas[1], relay.address(0, 1))
            .await
            .is_some());
        assert_eq!(
            exchange(&replicas[2], &replicas[0], relay.address(2, 0)).await,
            None
        );
        assert_eq!(
            exchange(&replicas[1], &replicas[2], relay.address(1, 2)).await,
            None
        );

        relay.set(LinkFaults::healed());
        assert!(exchange(&replicas[2], &replicas[0], relay.address(2, 0))
            .await
            .is_some());
    }
}
