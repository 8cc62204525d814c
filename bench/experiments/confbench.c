/* Micro-benchmark of pjmedia's serial conference bridge: CPU per bridge tick (the master
 * port's get_frame: read every source with listeners, mix, write every port) for a room
 * shaped like MiniVoice's, with stand-in member ports (no jitter buffer, codec or socket:
 * get_frame fills a constant or a square-wave tone, put_frame discards), so that only the
 * bridge's own work is timed, by the thread's CPU clock, which the load of other processes
 * barely moves.
 *
 *   confbench N TICKS VALUE MONITOR0 MESH
 *
 * N members; members 0 and 1 send a tone, the others the constant VALUE (8: what A-law
 * silence 0xD5 decodes to; 0: mu-law silence 0xFF, digital silence). Every member is
 * connected to slot 0, the level monitor of a large room; MONITOR0 = 1 sets slot 0's TX level
 * to 0 as the gateway does. MESH = 0: members 0 and 1 are heard by everyone (speakers-only
 * room); MESH = 1: everyone hears everyone (a small room).
 *
 * Built against pjlib, pjlib-util and pjmedia compiled from the same pjproject tarball with
 * sip/build/config_site.h (./configure with the flags in sip/build/build_pjsua2.sh, then
 * `make -C pjlib/build pjlib`, `make -C pjlib-util/build pjlib-util`, `make -C pjmedia/build
 * pjmedia`), once linked with conference.o of the stock source and once with the patched one:
 *
 *   gcc -O2 -DNDEBUG -DPJ_AUTOCONF=1 -DPJ_IS_BIG_ENDIAN=0 -DPJ_IS_LITTLE_ENDIAN=1 \
 *       -I<pj>/pjlib/include -I<pj>/pjlib-util/include -I<pj>/pjmedia/include \
 *       -I<pj>/pjnath/include -o confbench confbench.c conference.o \
 *       <pj>/pjmedia/lib/libpjmedia-*.a <pj>/pjlib-util/lib/libpjlib-util-*.a \
 *       <pj>/pjlib/lib/libpj-*.a -lsamplerate -lsrtp2 -lspeexdsp -lspeex -lgsm -lssl \
 *       -lcrypto -luuid -lm -lpthread
 *
 * Results: BENCHMARKS.md, "Skipping inaudible mixing".
 */
#include <pjmedia/conference.h>
#include <pjmedia/port.h>
#include <pjlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct member { pjmedia_port base; int value; int tone; unsigned phase; } member;

static pj_status_t m_get(pjmedia_port *p, pjmedia_frame *f) {
    member *m = (member*)p; pj_int16_t *s = (pj_int16_t*)f->buf; unsigned i;
    for (i = 0; i < 160; ++i)
        s[i] = m->tone ? (pj_int16_t)(((m->phase++ / 4) & 1) ? 8000 : -8000) : (pj_int16_t)m->value;
    f->type = PJMEDIA_FRAME_TYPE_AUDIO; f->size = 320;
    return PJ_SUCCESS;
}
static pj_status_t m_put(pjmedia_port *p, pjmedia_frame *f) { (void)p; (void)f; return PJ_SUCCESS; }

static double cpu_now(void) {
    struct timespec ts; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    unsigned n = atoi(argv[1]), ticks = atoi(argv[2]), i, j;
    int value = atoi(argv[3]), mon0 = atoi(argv[4]), mesh = atoi(argv[5]);
    pj_caching_pool cp; pj_pool_t *pool; pjmedia_conf *conf; pjmedia_port *master;
    pj_int16_t buf[160]; pjmedia_frame f; double t0, t1;
    unsigned *slots;
    pj_init(); pj_log_set_level(0);
    pj_caching_pool_init(&cp, NULL, 0);
    pool = pj_pool_create(&cp.factory, "b", 4096, 4096, NULL);
    if (pjmedia_conf_create(pool, n + 4, 8000, 1, 160, 16, PJMEDIA_CONF_NO_DEVICE, &conf)) return 1;
    master = pjmedia_conf_get_master_port(conf);
    slots = malloc(n * sizeof(unsigned));
    for (i = 0; i < n; ++i) {
        member *m = pj_pool_zalloc(pool, sizeof(member));
        pj_str_t name = pj_str("m");
        pjmedia_port_info_init(&m->base.info, &name, 0x1234, 8000, 1, 16, 160);
        m->base.get_frame = &m_get; m->base.put_frame = &m_put;
        m->value = value; m->tone = (i < 2);
        if (pjmedia_conf_add_port(conf, pool, &m->base, NULL, &slots[i])) return 2;
    }
    f.buf = buf; f.size = 320; f.type = PJMEDIA_FRAME_TYPE_AUDIO; f.timestamp.u64 = 0;
    pjmedia_port_get_frame(master, &f);  /* apply the adds */
    for (i = 0; i < n; ++i) {
        pjmedia_conf_connect_port(conf, slots[i], 0, 0);
        for (j = 0; j < n; ++j)
            if (j != i && (mesh || i < 2)) pjmedia_conf_connect_port(conf, slots[i], slots[j], 0);
    }
    if (mon0) pjmedia_conf_adjust_tx_level(conf, 0, -128);
    pjmedia_port_get_frame(master, &f);  /* apply the connects */
    t0 = cpu_now();
    for (i = 0; i < ticks; ++i) { f.size = 320; pjmedia_port_get_frame(master, &f); }
    t1 = cpu_now();
    printf("n=%u value=%d monitor_level0=%d mesh=%d: %.2f us per tick\n", n, value, mon0, mesh,
           (t1 - t0) / ticks * 1e6);
    return 0;
}
