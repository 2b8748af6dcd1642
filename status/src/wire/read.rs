//! Decoding: a [`Reader`] that checks every count against the bytes left before it
//! allocates, and the `decode` of requests and answers.

use holdfast_codec::Head;

use super::*;

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn str_u8(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        let n = usize::from(self.u8(what)?);
        std::str::from_utf8(self.take(n, what)?).map_err(|_| WireError::Malformed(what))
    }

    fn user(&mut self) -> Result<UserId, WireError> {
        let n = usize::from(self.u16("user id length")?);
        if n == 0 || n > MAX_USER_LEN {
            return Err(WireError::Malformed("user id length"));
        }
        let s = std::str::from_utf8(self.take(n, "user id")?)
            .map_err(|_| WireError::Malformed("user id"))?;
        Ok(UserId::from(s))
    }

    /// A count of elements each at least `min` bytes long; checked against what is left.
    fn count(&mut self, wide: bool, min: usize, what: &'static str) -> Result<usize, WireError> {
        let n = if wide { self.u32(what)? as usize } else { usize::from(self.u16(what)?) };
        if n.saturating_mul(min) > self.buf.len() {
            return Err(WireError::Truncated(what));
        }
        Ok(n)
    }

    fn session(&mut self) -> Result<Session, WireError> {
        let conn = self.u64("conn")?;
        let gateway = self.u16("gateway")?;
        let generation = self.u64("generation")?;
        let platform = self.u8("platform")?;
        let login_ms = self.u64("login time")?;
        let device = Box::from(self.str_u8("device id")?);
        Ok(Session { conn, gateway, device, platform, login_ms, generation })
    }

    fn entries(&mut self) -> Result<Vec<(UserId, Session)>, WireError> {
        let n = self.count(true, 3 + SESSION_MIN, "entry count")?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let user = self.user()?;
            out.push((user, self.session()?));
        }
        Ok(out)
    }

    fn members(&mut self) -> Result<Vec<Member>, WireError> {
        let n = self.count(false, 5, "member count")?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = NodeId(self.u16("member id")?);
            let weight = self.u16("member weight")?;
            let addr = self.str_u8("member address")?.to_owned();
            if weight == 0 {
                return Err(WireError::Malformed("member weight"));
            }
            out.push(Member { id, addr, weight });
        }
        Ok(out)
    }

    fn ring(&mut self) -> Result<RingState, WireError> {
        let epoch = self.u64("epoch")?;
        let vnodes = self.u16("vnodes")?;
        let replicas = self.u8("replicas")?;
        let read_next = match self.u8("read_next")? {
            0 => false,
            1 => true,
            _ => return Err(WireError::Malformed("read_next")),
        };
        let current = self.members()?;
        let next = match self.u8("has next")? {
            0 => None,
            1 => Some(self.members()?),
            _ => return Err(WireError::Malformed("has next")),
        };
        if vnodes == 0 || replicas == 0 {
            return Err(WireError::Malformed("ring parameters"));
        }
        Ok(RingState { epoch, vnodes, replicas, current, next, read_next })
    }

    fn end(&self) -> Result<(), WireError> {
        if self.buf.is_empty() { Ok(()) } else { Err(WireError::Malformed("trailing bytes")) }
    }
}

/// Smallest encoded session: conn, gateway, generation, platform, login time, device length.
const SESSION_MIN: usize = 8 + 2 + 8 + 1 + 8 + 1;

impl Request {
    /// Decode a request body of the frame with header `head`.
    pub fn decode(head: &Head, body: &[u8]) -> Result<Request, WireError> {
        let kind = Kind::request(head.kind).ok_or(WireError::UnknownKind(head.kind))?;
        let mut r = Reader { buf: body };
        let req = match kind {
            Kind::Hello => {
                let mut mac = [0u8; 32];
                mac.copy_from_slice(r.take(32, "mac")?);
                Request::Hello { mac }
            }
            Kind::Apply => {
                let epoch = r.u64("epoch")?;
                let gateway = r.u16("gateway")?;
                let generation = r.u64("generation")?;
                let n = r.count(false, 1 + 3 + 8, "write count")?;
                let mut writes = Vec::with_capacity(n);
                for _ in 0..n {
                    let tag = r.u8("write tag")?;
                    let user = r.user()?;
                    let conn = r.u64("conn")?;
                    writes.push(match tag {
                        1 => {
                            let platform = r.u8("platform")?;
                            let login_ms = r.u64("login time")?;
                            let device = Box::from(r.str_u8("device id")?);
                            Write::Online { user, conn, device, platform, login_ms }
                        }
                        2 => Write::Offline { user, conn },
                        _ => return Err(WireError::Malformed("write tag")),
                    });
                }
                Request::Apply { epoch, gateway, generation, writes }
            }
            Kind::Lookup => {
                let epoch = r.u64("epoch")?;
                let n = r.count(false, 3, "user count")?;
                let mut users = Vec::with_capacity(n);
                for _ in 0..n {
                    users.push(r.user()?);
                }
                Request::Lookup { epoch, users }
            }
            Kind::Renew => Request::Renew {
                gateway: r.u16("gateway")?,
                generation: r.u64("generation")?,
                ttl_ms: r.u32("ttl")?,
            },
            Kind::List => Request::List { gateway: r.u16("gateway")? },
            Kind::Resync => Request::Resync {
                epoch: r.u64("epoch")?,
                gateway: r.u16("gateway")?,
                generation: r.u64("generation")?,
                first: head.flags & FLAG_FIRST != 0,
                sessions: r.entries()?,
            },
            Kind::Counts => Request::Counts,
            Kind::Ring => Request::Ring,
            Kind::Install => Request::Install(r.ring()?),
            Kind::Merge => {
                let n = r.count(false, 14, "lease count")?;
                let mut leases = Vec::with_capacity(n);
                for _ in 0..n {
                    leases.push(LeaseTransfer {
                        gateway: r.u16("gateway")?,
                        generation: r.u64("generation")?,
                        remaining: std::time::Duration::from_millis(u64::from(r.u32("remaining")?)),
                    });
                }
                Request::Merge { leases, sessions: r.entries()? }
            }
            Kind::Migrate => Request::Migrate { epoch: r.u64("epoch")? },
            Kind::Challenge | Kind::Error => return Err(WireError::UnknownKind(head.kind)),
        };
        r.end()?;
        Ok(req)
    }
}

impl Response {
    /// Decode an answer of kind `head.kind` to a request of kind `asked` (`None` for the
    /// unsolicited `CHALLENGE`).
    pub fn decode(head: &Head, body: &[u8], asked: Option<Kind>) -> Result<Response, WireError> {
        let mut r = Reader { buf: body };
        let resp = if head.kind == Kind::Error as u8 {
            Response::Error {
                code: Code::from_u8(r.u8("code")?),
                epoch: r.u64("epoch")?,
                detail: r.u64("detail")?,
                message: {
                    let n = usize::from(r.u16("message length")?);
                    String::from_utf8_lossy(r.take(n, "message")?).into_owned()
                },
                fatal: head.flags & FLAG_FATAL != 0,
            }
        } else if head.kind == Kind::Challenge as u8 && asked.is_none() {
            let version = r.u16("version")?;
            let mut nonce = [0u8; 32];
            nonce.copy_from_slice(r.take(32, "nonce")?);
            Response::Challenge { version, nonce }
        } else {
            let asked = asked.ok_or(WireError::UnknownKind(head.kind))?;
            if head.kind != asked as u8 | 0x80 {
                return Err(WireError::UnknownKind(head.kind));
            }
            match asked {
                Kind::Hello => Response::HelloOk {
                    node: NodeId(r.u16("node")?),
                    incarnation: r.u64("incarnation")?,
                    epoch: r.u64("epoch")?,
                },
                Kind::Apply => Response::Applied(r.u16("count")?),
                Kind::Lookup => {
                    let n = r.count(false, 2, "user count")?;
                    let mut all = Vec::with_capacity(n);
                    for _ in 0..n {
                        let k = r.count(false, SESSION_MIN, "session count")?;
                        let mut list = Vec::with_capacity(k);
                        for _ in 0..k {
                            list.push(r.session()?);
                        }
                        all.push(list);
                    }
                    Response::Found(all)
                }
                Kind::Renew => Response::Renewed {
                    incarnation: r.u64("incarnation")?,
                    epoch: r.u64("epoch")?,
                    created: r.u8("created")? != 0,
                },
                Kind::List => Response::Listed(r.entries()?),
                Kind::Resync => Response::Resynced,
                Kind::Counts => {
                    let sessions = r.u64("sessions")?;
                    let users = r.u64("users")?;
                    let gateways = r.u32("gateways")?;
                    let stored = r.u64("stored")?;
                    Response::Counts {
                        counts: Counts { sessions, users: Some(users), gateways },
                        stored,
                    }
                }
                Kind::Ring => Response::Ring(r.ring()?),
                Kind::Install => Response::Installed(r.u64("epoch")?),
                Kind::Merge => Response::Merged(r.u32("count")?),
                Kind::Migrate => Response::Migrated(r.u64("count")?),
                Kind::Challenge | Kind::Error => return Err(WireError::UnknownKind(head.kind)),
            }
        };
        r.end()?;
        Ok(resp)
    }
}
