/*
 * MiniVoice's pjproject build configuration.
 *
 * The stock build caps a process at 4 calls (PJSUA_MAX_CALLS) and uses a
 * select() ioqueue limited to 64 handles; a conference gateway needs
 * thousands of each. Changing this file changes the build cache key, so the
 * next `make run`/`make test` rebuilds pjsua2 by itself.
 */
/* 4000 calls: the benchmark's 2000 SIPp legs plus its probe legs and a cluster's cascade
 * legs fit with room to spare. Conference ports: two per call (the gateway's
 * sip.max_calls * 2 + 100 media ports) plus players and recorders. Both are static arrays;
 * measured idle RSS in BENCHMARKS.md. */
#define PJSUA_MAX_CALLS              4000
#define PJSUA_MAX_CONF_PORTS         8200
#define PJSUA_MAX_PLAYERS            2000
#define PJSUA_MAX_RECORDERS          2000
#define PJ_IOQUEUE_MAX_HANDLES       16384
#define PJ_IOQUEUE_MAX_EVENTS_IN_SINGLE_POLL 64
/* Level-triggered epoll, as before pjlib 2.14. The 2.17 default (EPOLLEXCLUSIVE) re-arms
 * every socket with EPOLL_CTL_DEL + ADD: 3.8 epoll_ctl calls per RTP packet. Measured with
 * the benchmark (BENCHMARKS.md): epoll_ctl halved, about 25% less CPU per leg, set-up p99 at
 * 1000 legs 68 ms instead of 112-556 ms. The gateway has one ioqueue poller, so the thundering
 * herd EPOLLEXCLUSIVE guards against cannot happen. */
#define PJ_IOQUEUE_DEFAULT_EPOLL_FLAGS 0
#define PJSIP_MAX_TSX_COUNT          65535
#define PJSIP_MAX_DIALOG_COUNT       65535
#define PJMEDIA_HAS_VIDEO            0
#define PJ_HAS_IPV6                  1
/* RTP address latching only at the start of a stream. pjmedia follows a stream's RTP to a new
 * source address at once until the first packet from the signalled address arrives (NAT
 * latching, kept), and afterwards once PJMEDIA_RTP_NAT_PROBATION_CNT packets in a row come from
 * elsewhere: 10 packets in 20 ms let anyone who can reach the port take over a participant's
 * mix and inject audio. Past the start only a re-INVITE moves a stream. (RTCP likewise.) */
#define PJMEDIA_RTP_NAT_PROBATION_CNT   0x7fffffff
#define PJMEDIA_RTCP_NAT_PROBATION_CNT  0x7fffffff
/* The SIP edge relays UDP messages up to 64 KiB; pjsip's default 4000 dropped larger INVITEs
 * without a word. 16 KiB covers any real INVITE (SDP offers are capped at 16 KiB by sip/sdp.py)
 * without making each transmit buffer 64 KiB. */
#define PJSIP_MAX_PKT_LEN               16384
/* Requests larger than 1300 bytes stay on UDP (RFC 3261 18.1.1 would move them to TCP). The
 * gateway's SIP peer is the edge on loopback, which takes 64 KiB UDP and knows the gateway by
 * its UDP source address and port; an INVITE offering SRTP (a=crypto lines) passes 1300 bytes,
 * went out over TCP from an ephemeral port and was challenged as a stranger (407). */
#define PJSIP_DONT_SWITCH_TO_TCP        1
