/*
 * MiniVoice's pjproject build configuration.
 *
 * The stock build caps a process at 4 calls (PJSUA_MAX_CALLS) and uses a
 * select() ioqueue limited to 64 handles; a conference gateway needs
 * thousands of each. Changing this file changes the build cache key, so the
 * next `make run`/`make test` rebuilds pjsua2 by itself.
 */
#define PJSUA_MAX_CALLS              2000
#define PJSUA_MAX_CONF_PORTS         4100
#define PJSUA_MAX_PLAYERS            2000
#define PJSUA_MAX_RECORDERS          2000
#define PJ_IOQUEUE_MAX_HANDLES       16384
#define PJ_IOQUEUE_MAX_EVENTS_IN_SINGLE_POLL 64
#define PJSIP_MAX_TSX_COUNT          65535
#define PJSIP_MAX_DIALOG_COUNT       65535
#define PJMEDIA_HAS_VIDEO            0
#define PJ_HAS_IPV6                  1
