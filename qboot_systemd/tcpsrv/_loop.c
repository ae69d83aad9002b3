/* The ConnectionLoop: qboot-tcpsrv's per-connection path in C. A connection that needs names,
 * ident, a rate or -C decision is offered to Python first (hold()), and with the in-core
 * rblsmtpd again after the rules (screen()): Python answers at once (names cached, a
 * verdict known), refuses it, or keeps it without a session slot and hands it back
 * decided with admit().
 *
 * In the loop's thread and without a GIL hand-over it accepts, looks the client up in the
 * rules cdb (tcpserver's key order), lays out tcp-environ(5), hands the spawn to the
 * SpawnPool's threads (they wait for the kernel's vfork while the loop accepts), books
 * what they report, reaps on SIGCHLD and writes tcpserver's -v lines in its order. What is policy stays in Python
 * (server.py): it decides whether a server may use the ConnectionLoop, reads the rules file (the
 * ConnectionLoop asks it again when stat() shows a new file), handles every other signal, the
 * back-off after EMFILE, STATUS= and the drain after SIGTERM. The Python loop does the
 * same work per connection for the servers the ConnectionLoop is not for, and when the extension
 * is not built (QBOOT_NO_EXTENSION=1).
 */
#include "_core.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROGRAM "qboot-tcpsrv"
#define WAKE_TAG UINT32_MAX
#define POOL_TAG (UINT32_MAX - 1)
#define CHILD_TAG (UINT32_MAX - 2)
#define WATCHED_TAG (UINT32_MAX - 3) /* Python's fd (its lookups' epoll): run() returns */
#define FIRST_TAG WATCHED_TAG        /* below: a listener's index */

typedef struct {
    int fd;
    int fixed;                    /* the local address is known: not a wildcard */
    char ip[INET6_ADDRSTRLEN];    /* when fixed */
    int port;
} Listener;

/* A running child whose spawn has been reported, and whose session it is. */
typedef struct {
    pid_t pid; /* 0 for a free slot */
    char client[INET6_ADDRSTRLEN];
} Child;

/* The running children by pid (open addressing). */
typedef struct {
    Child *slots;
    size_t capacity; /* a power of two, or 0 */
    size_t count;
} PidSet;

/* A connection's names as C strings (NULL: unknown), each with the form its log lines
 * show ("" for unknown). */
typedef struct {
    const char *local, *local_log, *remote, *remote_log, *info, *info_log;
} Names;

/* A connection Python handed back decided, waiting for a session slot. */
typedef struct Admitted {
    struct Admitted *next;
    int fd;
    char local_ip[INET6_ADDRSTRLEN], remote_ip[INET6_ADDRSTRLEN];
    int local_port, remote_port;
    PyObject *names; /* the 6-tuple admit() was given */
    int screened;    /* the in-core rblsmtpd found it clean */
} Admitted;

/* A child reaped before its spawn was reported: its end is logged after its ok line. */
typedef struct {
    pid_t pid;
    int status;
} EarlyExit;

typedef struct {
    PyObject_HEAD
    SpawnPool *pool;  /* strong reference; its threads run the spawns */
    Spawner *spawner; /* the pool's */
    int epoll_fd;     /* -1 until start() */
    int wake_fd;  /* signal.set_wakeup_fd's: one byte per signal number */
    int child_fd; /* a signalfd for SIGCHLD, which start() blocks in this thread */
    sigset_t saved_mask;
    int log_fd;
    Listener *listeners;
    int listener_count;
    int watching; /* the listeners are in the epoll set */
    int paused;   /* Python's back-off after EMFILE and alike */
    int stopped;  /* SIGTERM: the listeners are Python's to close */
    int limit, running;
    long served, denied, accepted;
    /* server.py's policy: the wait statuses logged for a deny and a drop, accepts per
     * wake-up (fair between listeners and children) */
    int deny_status, drop_status, accepts_per_wake;
    int in_flight;     /* jobs with the pool, not reported yet */
    PidSet reported;   /* running children whose spawn was reported */
    EarlyExit *early;  /* reaped before reported */
    int early_count, early_capacity;
    int verbosity, ipv6_env, nodelay, kill_ip_options, unmap_in_log;
    pid_t server_pid;
    PyObject *local_host;     /* bytes: TCPLOCALHOST, or None (each connection's, from hold) */
    PyObject *local_host_log; /* bytes: the same as logline.safe() shows it */
    /* hold(fd, local_ip, local_port, remote_ip, remote_port), before the banner: the
     * connection's names, decided at once; True: held by Python for a pre-session stage
     * (lookups), to come back by admit() or be closed there; None: refused and closed.
     * NULL: every connection is ours. */
    PyObject *hold;
    PyObject *ended; /* ended(client) as each session ends (for -C), or NULL */
    PyObject *screen; /* the in-core rblsmtpd's screen() (see screen()), or NULL */
    Admitted *admitted_head, *admitted_tail; /* decided, waiting for a slot */
    int admitted_count;
    int held_since_run; /* hold() kept one: run() returns, Python has new deadlines */
    PyObject *banner;         /* bytes, maybe empty */
    PyObject *program_log;    /* bytes: the program's name for warnings */
    /* The rules: path None for no -x; reload() -> (identity, data, drop_line). */
    PyObject *rules_path, *reload, *rules_data, *drop_line, *format_error_line;
    int have_identity;
    dev_t dev;
    ino_t ino;
    off_t size;
    long long mtime_ns;
} ConnectionLoop;

/* --- log lines, as logline.py writes them ------------------------------------------ */

/* format into line (size bytes), cut to fit: the length written. */
static size_t format_line(char *line, size_t size, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

static size_t format_line_va(char *line, size_t size, const char *format, va_list arguments)
{
    int length = vsnprintf(line, size, format, arguments);
    if (length < 0)
        return 0;
    return (size_t)length < size ? (size_t)length : size - 1;
}

static size_t format_line(char *line, size_t size, const char *format, ...)
{
    va_list arguments;
    va_start(arguments, format);
    size_t length = format_line_va(line, size, format, arguments);
    va_end(arguments);
    return length;
}

static void log_write(ConnectionLoop *self, int level, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

static void log_write(ConnectionLoop *self, int level, const char *format, ...)
{
    if (self->verbosity < level)
        return;
    char line[1024];
    va_list arguments;
    va_start(arguments, format);
    size_t length = format_line_va(line, sizeof line, format, arguments);
    va_end(arguments);
    /* A log nobody reads (EPIPE, EAGAIN) is ignored, as tcpserver ignores it. */
    (void)!write(self->log_fd, line, length);
}

static void session_started(ConnectionLoop *self)
{
    self->running++;
    log_write(self, 2, PROGRAM ": status: %d/%d\n", self->running, self->limit);
}

static void session_over(ConnectionLoop *self, const char *client)
{
    self->running--;
    log_write(self, 2, PROGRAM ": status: %d/%d\n", self->running, self->limit);
    if (self->ended) {
        PyObject *type, *value, *traceback; /* an error on its way up stays the one */
        PyErr_Fetch(&type, &value, &traceback);
        PyObject *done = PyObject_CallFunction(self->ended, "s", client);
        if (!done) /* nothing to hand it to: shown, as a thread's would be */
            PyErr_WriteUnraisable(self->ended);
        Py_XDECREF(done);
        PyErr_Restore(type, value, traceback);
    }
}

/* A connection closed without running anything: the lines tcpserver's child would log. */
static void refuse(ConnectionLoop *self, int fd, const char *client, int status, int level,
                   const char *line, size_t length)
{
    if (fd >= 0)
        close(fd);
    log_write(self, 2, PROGRAM ": pid %d from %s\n", (int)self->server_pid, client);
    if (self->verbosity >= level && length)
        (void)!write(self->log_fd, line, length);
    log_write(self, 2, PROGRAM ": end %d status %d\n", (int)self->server_pid, status);
    session_over(self, client);
}

/* --- addresses ------------------------------------------------------------------------ */

static int format_address(const struct sockaddr_storage *address, char *text, int *port)
{
    if (address->ss_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)address;
        *port = ntohs(in4->sin_port);
        return inet_ntop(AF_INET, &in4->sin_addr, text, INET6_ADDRSTRLEN) ? 0 : -1;
    }
    if (address->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)address;
        *port = ntohs(in6->sin6_port);
        return inet_ntop(AF_INET6, &in6->sin6_addr, text, INET6_ADDRSTRLEN) ? 0 : -1;
    }
    return -1;
}

/* addresses.py's forms: `::ffff:1.2.3.4` is an IPv4 client on a dual-stack socket. */
static int is_mapped(const char *ip)
{
    return strncmp(ip, "::ffff:", 7) == 0 && strchr(ip, '.') != NULL;
}

static const char *unmapped(const char *ip)
{
    return is_mapped(ip) ? ip + 7 : ip;
}

/* map_ipv4: `1.2.3.4` -> `::ffff:1.2.3.4`, IPv6 as it is (into out, 7 + INET6_ADDRSTRLEN) */
static const char *mapped(const char *ip, char *out)
{
    if (strchr(ip, ':'))
        return ip;
    snprintf(out, 7 + INET6_ADDRSTRLEN, "::ffff:%s", ip);
    return out;
}

/* --- rules ------------------------------------------------------------------------------ */

static uint32_t u32_at(const unsigned char *data)
{
    return (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
           (uint32_t)data[3] << 24;
}

/* cdb.py's CdbReader.get, with its bounds checks: 1 found (value, length), 0 not found,
 * -1 not a cdb. */
static int cdb_get(const unsigned char *data, uint64_t size, const char *key, size_t length,
                   const unsigned char **value, uint32_t *value_length)
{
    uint32_t hash = 5381;
    for (size_t i = 0; i < length; i++)
        hash = ((hash << 5) + hash) ^ (unsigned char)key[i];
    uint64_t header = (hash << 3) & 2047;
    if (header + 8 > size)
        return -1;
    uint64_t table = u32_at(data + header), slots = u32_at(data + header + 4);
    if (!slots)
        return 0;
    uint64_t table_end = table + (slots << 3);
    uint64_t slot = table + (((hash >> 8) % slots) << 3);
    for (uint64_t i = 0; i < slots; i++) {
        if (slot + 8 > size)
            return -1;
        uint32_t slot_hash = u32_at(data + slot), record = u32_at(data + slot + 4);
        if (!record)
            return 0;
        slot += 8;
        if (slot == table_end)
            slot = table;
        if (slot_hash != hash)
            continue;
        if ((uint64_t)record + 8 > size)
            return -1;
        uint32_t key_length = u32_at(data + record), data_length = u32_at(data + record + 4);
        if (key_length != length)
            continue;
        uint64_t start = (uint64_t)record + 8;
        if (start + key_length + data_length > size)
            return -1;
        if (memcmp(data + start, key, length) == 0) {
            *value = data + start + key_length;
            *value_length = data_length;
            return 1;
        }
    }
    return 0;
}

/* rules.candidate_keys, in tcpserver's order: info@ip, info@=host, ip, =host, the ip's
 * prefixes at '.' and ':', =.suffixes of host at each '.', "=", then "". key has room for
 * all of them; each try returns as cdb_get does. */
static int rules_find(ConnectionLoop *self, const char *ip, const char *host, const char *info,
                      char *key, const unsigned char **value, uint32_t *value_length)
{
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(self->rules_data);
    uint64_t size = (uint64_t)PyBytes_GET_SIZE(self->rules_data);
    size_t length = strlen(ip), host_length = host ? strlen(host) : 0;
    int found = 0;
#define TRY(text, count)                                                                  \
    do {                                                                                  \
        if (found == 0)                                                                   \
            found = cdb_get(data, size, (text), (count), value, value_length);            \
    } while (0)
    if (info) {
        size_t info_length = strlen(info);
        memcpy(key, info, info_length);
        key[info_length] = '@';
        memcpy(key + info_length + 1, ip, length);
        TRY(key, info_length + 1 + length);
        if (host) {
            key[info_length + 1] = '=';
            memcpy(key + info_length + 2, host, host_length);
            TRY(key, info_length + 2 + host_length);
        }
    }
    TRY(ip, length);
    if (host) {
        key[0] = '=';
        memcpy(key + 1, host, host_length);
        TRY(key, 1 + host_length);
    }
    for (size_t cut = length; found == 0 && cut > 0; cut--)
        if (ip[cut - 1] == '.' || ip[cut - 1] == ':')
            TRY(ip, cut);
    if (host) {
        for (size_t at = 0; found == 0 && at < host_length; at++)
            if (host[at] == '.') {
                memcpy(key + 1, host + at, host_length - at);
                TRY(key, 1 + host_length - at);
            }
        TRY("=", 1);
    }
    TRY("", 0);
#undef TRY
    return found;
}

/* Ask Python for the rules when the file is not the one read last: (identity or None,
 * cdb bytes or None, the line to log for dropping a connection or None). */
static int rules_refresh(ConnectionLoop *self)
{
    struct stat status;
    const char *path = PyBytes_AS_STRING(self->rules_path);
    if (stat(path, &status) == 0 && self->have_identity && status.st_dev == self->dev &&
        status.st_ino == self->ino && status.st_size == self->size &&
        (long long)status.st_mtim.tv_sec * 1000000000LL + status.st_mtim.tv_nsec ==
            self->mtime_ns)
        return 0;
    PyObject *state = PyObject_CallNoArgs(self->reload);
    if (!state)
        return -1;
    PyObject *identity, *data, *drop_line;
    if (!PyArg_ParseTuple(state, "OOO", &identity, &data, &drop_line)) {
        Py_DECREF(state);
        return -1;
    }
    self->have_identity = 0;
    if (identity != Py_None) {
        unsigned long long dev, ino;
        long long size, mtime_ns;
        if (!PyArg_ParseTuple(identity, "KKLL", &dev, &ino, &size, &mtime_ns)) {
            Py_DECREF(state);
            return -1;
        }
        self->dev = (dev_t)dev;
        self->ino = (ino_t)ino;
        self->size = (off_t)size;
        self->mtime_ns = mtime_ns;
        self->have_identity = 1;
    }
    Py_XSETREF(self->rules_data, data == Py_None ? NULL : Py_NewRef(data));
    Py_XSETREF(self->drop_line, drop_line == Py_None ? NULL : Py_NewRef(drop_line));
    Py_DECREF(state);
    if ((self->rules_data && !PyBytes_Check(self->rules_data)) ||
        (self->drop_line && !PyBytes_Check(self->drop_line))) {
        Py_CLEAR(self->rules_data);
        Py_CLEAR(self->drop_line);
        self->have_identity = 0;
        PyErr_SetString(PyExc_TypeError, "reload() must give bytes or None");
        return -1;
    }
    return 0;
}

/* --- children --------------------------------------------------------------------------- */

static size_t pid_slot(const PidSet *set, pid_t pid)
{
    return ((uint32_t)pid * 2654435761u) & (set->capacity - 1);
}

static int pidset_add(PidSet *set, pid_t pid, const char *client)
{
    if ((set->count + 1) * 2 > set->capacity) {
        size_t capacity = set->capacity ? set->capacity * 2 : 64;
        Child *slots = PyMem_Calloc(capacity, sizeof(Child));
        if (!slots) {
            PyErr_NoMemory();
            return -1;
        }
        PidSet grown = {slots, capacity, 0};
        for (size_t i = 0; i < set->capacity; i++)
            if (set->slots[i].pid) {
                size_t at = pid_slot(&grown, set->slots[i].pid);
                while (slots[at].pid)
                    at = (at + 1) & (capacity - 1);
                slots[at] = set->slots[i];
                grown.count++;
            }
        PyMem_Free(set->slots);
        *set = grown;
    }
    size_t at = pid_slot(set, pid);
    while (set->slots[at].pid && set->slots[at].pid != pid)
        at = (at + 1) & (set->capacity - 1);
    if (!set->slots[at].pid)
        set->count++;
    set->slots[at].pid = pid;
    snprintf(set->slots[at].client, sizeof set->slots[at].client, "%s", client);
    return 0;
}

/* 1 if pid was there (now gone; its client copied to client), else 0. Linear probing's
 * deletion: later entries of the run move back, so every lookup still finds them. */
static int pidset_remove(PidSet *set, pid_t pid, char *client)
{
    if (!set->capacity)
        return 0;
    size_t mask = set->capacity - 1, at = pid_slot(set, pid);
    while (set->slots[at].pid != pid) {
        if (!set->slots[at].pid)
            return 0;
        at = (at + 1) & mask;
    }
    memcpy(client, set->slots[at].client, INET6_ADDRSTRLEN);
    set->slots[at].pid = 0;
    set->count--;
    for (size_t next = (at + 1) & mask; set->slots[next].pid; next = (next + 1) & mask) {
        size_t home = pid_slot(set, set->slots[next].pid);
        /* move it into the hole unless its home lies cyclically in (at, next] */
        if ((next > at && (home <= at || home > next)) ||
            (next < at && (home <= at && home > next))) {
            set->slots[at] = set->slots[next];
            set->slots[next].pid = 0;
            at = next;
        }
    }
    return 1;
}

static void child_over(ConnectionLoop *self, pid_t pid, int status, const char *client)
{
    log_write(self, 2, PROGRAM ": end %d status %d\n", (int)pid, status);
    session_over(self, client);
}

/* A spawn done: log the child's pid and ok lines (as tcpserver's child does before its
 * exec) and book it, or refuse the connection whose program could not run. */
static int report(ConnectionLoop *self, Job *job)
{
    const char *client = job->note, *ok = job->note + strlen(job->note) + 1;
    if (job->error) {
        /* a child that could not exec, reaped by us before the pool's waitpid */
        for (int i = 0; i < self->early_count; i++)
            if (job->pid > 0 && self->early[i].pid == job->pid)
                self->early[i--] = self->early[--self->early_count];
        char line[512];
        size_t length = format_line(line, sizeof line, PROGRAM ": warning: unable to run %s: %s\n",
                                    PyBytes_AS_STRING(self->program_log), strerror(job->error));
        refuse(self, -1, client, self->drop_status, 1, line, length);
        return 0;
    }
    self->served++;
    log_write(self, 2, PROGRAM ": pid %d from %s\n", (int)job->pid, client);
    log_write(self, 2, PROGRAM ": ok %d %s\n", (int)job->pid, ok);
    for (int i = 0; i < self->early_count; i++)
        if (self->early[i].pid == job->pid) {
            child_over(self, job->pid, self->early[i].status, client);
            self->early[i] = self->early[--self->early_count];
            return 0;
        }
    return pidset_add(&self->reported, job->pid, client);
}

/* The pool's reports, in the order it spawned. */
static int spawns_reported(ConnectionLoop *self)
{
    Job *job = qboot_pool_take_done(self->pool);
    int result = 0;
    for (Job *next; job; job = next) {
        next = job->next;
        self->in_flight--;
        if (report(self, job) < 0)
            result = -1; /* the others are still reported; run() raises MemoryError */
        qboot_job_free(job);
    }
    /* Every spawn reported: a child reaped early and still unmatched was not ours. */
    if (self->in_flight == 0)
        self->early_count = 0;
    return result;
}

static int reap(ConnectionLoop *self)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return 0;
        char client[INET6_ADDRSTRLEN];
        if (pidset_remove(&self->reported, pid, client)) {
            child_over(self, pid, status, client);
            continue;
        }
        /* Not a child we spawned (one from before our exec, or an orphan we got as a
         * pid 1): forgotten, or its pid, when it comes back for a spawn, would end that
         * session at once. */
        if (self->in_flight == 0)
            continue;
        /* else maybe one whose spawn's report is on its way (the pool's thread has not
         * queued it yet) */
        if (self->early_count == self->early_capacity) {
            int capacity = self->early_capacity ? self->early_capacity * 2 : 16;
            EarlyExit *grown = PyMem_Realloc(self->early, sizeof(EarlyExit) * (size_t)capacity);
            if (!grown) {
                PyErr_NoMemory();
                return -1;
            }
            self->early = grown;
            self->early_capacity = capacity;
        }
        self->early[self->early_count++] = (EarlyExit){pid, status};
    }
}

/* --- the environment ------------------------------------------------------------------ */

typedef struct {
    const char *text; /* NAME=value */
    size_t length;
    size_t name_length;
} Entry;

static size_t name_length_of(const char *text, size_t length)
{
    const char *equals = memchr(text, '=', length);
    return equals ? (size_t)(equals - text) : length;
}

/* The connection's variables by name, in the order first set (a dict's, as server.py's
 * extra.update(decision.env)), with a hash index: a rule may set thousands. */
typedef struct {
    Entry *entries;
    size_t count;
    size_t *slots; /* index + 1 of an entry, 0 for a free slot */
    size_t mask;
} EntrySet;

static size_t name_hash(const char *name, size_t length)
{
    uint64_t hash = 14695981039346656037ULL; /* FNV-1a */
    for (size_t i = 0; i < length; i++)
        hash = (hash ^ (unsigned char)name[i]) * 1099511628211ULL;
    return (size_t)hash;
}

/* The slot of name's entry, or the free slot where it would go. */
static size_t entry_slot(const EntrySet *set, const char *name, size_t length)
{
    size_t at = name_hash(name, length) & set->mask;
    while (set->slots[at]) {
        const Entry *entry = &set->entries[set->slots[at] - 1];
        if (entry->name_length == length && memcmp(entry->text, name, length) == 0)
            break;
        at = (at + 1) & set->mask;
    }
    return at;
}

/* Add NAME=value: a name set before keeps its place and takes the new value. */
static void entry_set(EntrySet *set, const char *text, size_t length)
{
    size_t name = name_length_of(text, length);
    size_t at = entry_slot(set, text, name);
    if (set->slots[at]) {
        Entry *entry = &set->entries[set->slots[at] - 1];
        entry->text = text;
        entry->length = length;
        return;
    }
    set->entries[set->count++] = (Entry){text, length, name};
    set->slots[at] = set->count;
}

/* Spawn for fd (in the pool, or here) with tcp-environ(5) and the rule's variables; note
 * is what the report's log lines need. Returns 0; or -1 with a Python exception (no
 * memory) before the spawn, fd the caller's to close; or -2 with one after it. */
static int spawn_connection(ConnectionLoop *self, int fd, const char *local_ip, int local_port,
                            const char *remote_ip, int remote_port, const Names *names,
                            const unsigned char *rule, uint32_t rule_length, char *note,
                            int queue_empty)
{
    int ipv4 = (!strchr(remote_ip, ':') || is_mapped(remote_ip)) && !self->ipv6_env;
    char local_mapped[7 + INET6_ADDRSTRLEN], remote_mapped[7 + INET6_ADDRSTRLEN];
    const char *local_shown = ipv4 ? unmapped(local_ip) : mapped(local_ip, local_mapped);
    const char *remote_shown = ipv4 ? unmapped(remote_ip) : mapped(remote_ip, remote_mapped);
    const char *local6 = mapped(local_ip, local_mapped);
    const char *remote6 = mapped(remote_ip, remote_mapped);

    char tcp[1024];
    int tcp_length = snprintf(
        tcp, sizeof tcp,
        "PROTO=%s%cTCPLOCALIP=%s%cTCPLOCALPORT=%d%cTCPREMOTEIP=%s%cTCPREMOTEPORT=%d%c"
        "TCP6LOCALIP=%s%cTCP6LOCALPORT=%d%cTCP6REMOTEIP=%s%cTCP6REMOTEPORT=%d%c",
        ipv4 ? "TCP" : "TCP6", 0, local_shown, 0, local_port, 0, remote_shown, 0,
        remote_port, 0, local6, 0, local_port, 0, remote6, 0, remote_port, 0);
    if (tcp_length < 0 || (size_t)tcp_length >= sizeof tcp) { /* cannot be: addresses */
        PyMem_RawFree(note);
        PyErr_SetString(PyExc_ValueError, "addresses too long");
        return -1;
    }
    /* The names known, TCP and TCP6 each, in environ.connection_environment's order (C
     * strings: a name holds no NUL) */
    static const char *const suffixes[3] = {"LOCALHOST", "REMOTEHOST", "REMOTEINFO"};
    const char *values[3] = {names->local, names->remote, names->info};
    size_t hosts_size = 1;
    for (int i = 0; i < 3; i++)
        hosts_size += values[i] ? 2 * (strlen(values[i]) + 20) : 0;
    char *hosts = PyMem_Malloc(hosts_size);
    if (!hosts) {
        PyMem_RawFree(note);
        PyErr_NoMemory();
        return -1;
    }
    size_t host_count = 0, hosts_length = 0;
    for (int i = 0; i < 3; i++)
        for (int six = 0; values[i] && six < 2; six++) {
            int written = snprintf(hosts + hosts_length, hosts_size - hosts_length, "%s%s=%s",
                                   six ? "TCP6" : "TCP", suffixes[i], values[i]);
            hosts_length += (size_t)written + 1;
            host_count++;
        }

    /* Room for the TCP variables and the rule's `+NAME=value` records, counted: a value
     * may be as long as the cdb (1 GiB), so its length says nothing of their number, and
     * a rule of millions of other records needs none. */
    size_t most = 9 + host_count;
    for (uint32_t at = 0; rule && at < rule_length;) {
        const unsigned char *end = memchr(rule + at, 0, rule_length - at);
        if (!end)
            break;
        most += rule[at] == '+';
        at = (uint32_t)(end - rule) + 1;
    }
    size_t base_count = (size_t)PyTuple_GET_SIZE(self->spawner->base);
    size_t slots = 16;
    while (slots < 2 * most)
        slots *= 2;
    EntrySet set = {PyMem_Malloc(sizeof(Entry) * most), 0, PyMem_Calloc(slots, sizeof(size_t)),
                    slots - 1};
    Entry *extra = set.entries;
    Job *job = PyMem_RawCalloc(1, sizeof(Job));
    char **envp = PyMem_RawMalloc(sizeof(char *) * (base_count + most + 1));
    if (!extra || !set.slots || !envp || !job) {
        PyMem_Free(hosts);
        PyMem_Free(extra);
        PyMem_Free(set.slots);
        PyMem_RawFree(envp);
        PyMem_RawFree(job);
        PyMem_RawFree(note);
        PyErr_NoMemory();
        return -1;
    }
    for (const char *at = tcp; at < tcp + tcp_length; at += strlen(at) + 1)
        entry_set(&set, at, strlen(at));
    for (const char *at = hosts; at < hosts + hosts_length; at += strlen(at) + 1)
        entry_set(&set, at, strlen(at));
    for (uint32_t at = 0; at < rule_length;) {
        const unsigned char *end = memchr(rule + at, 0, rule_length - at);
        if (!end)
            break;
        uint32_t length = (uint32_t)(end - (rule + at));
        if (length > 1 && rule[at] == '+' && memchr(rule + at + 1, '=', length - 1))
            entry_set(&set, (const char *)rule + at + 1, length - 1);
        at += length + 1;
    }
    /* The server's environment, without what the connection's variables replace. */
    size_t envc = 0;
    for (size_t i = 0; i < base_count; i++) {
        const char *text = PyBytes_AS_STRING(PyTuple_GET_ITEM(self->spawner->base, (Py_ssize_t)i));
        size_t name = name_length_of(text, strlen(text));
        if (!set.slots[entry_slot(&set, text, name)])
            envp[envc++] = (char *)text;
    }
    /* The job's own copies (entries point into tcp, hosts and the rule, which do not
     * outlive this call); the base's stay in the Spawner, which the pool keeps alive. */
    size_t copies = 0;
    for (size_t j = 0; j < set.count; j++)
        copies += extra[j].length + 1;
    PyMem_Free(set.slots);
    char *block = PyMem_RawMalloc(copies ? copies : 1);
    if (!block) {
        PyMem_Free(hosts);
        PyMem_Free(extra);
        PyMem_RawFree(envp);
        PyMem_RawFree(job);
        PyMem_RawFree(note);
        PyErr_NoMemory();
        return -1;
    }
    char *cursor = block;
    for (size_t j = 0; j < set.count; j++) {
        memcpy(cursor, extra[j].text, extra[j].length);
        cursor[extra[j].length] = '\0';
        envp[envc++] = cursor;
        cursor += extra[j].length + 1;
    }
    envp[envc] = NULL;
    PyMem_Free(hosts);
    PyMem_Free(extra);
    job->envp = envp;
    job->strings = block;
    job->note = note;
    job->fd = fd;
    job->ucspi_fd = -1;
    if (queue_empty && self->running == 1 && self->in_flight == 0) {
        /* The only session and no connection queued behind it: nothing waits for this
         * thread, so it spawns itself rather than wake a pool thread and be woken by its
         * report (a connection arriving now waits for the child's exec, some 50 µs). */
        job->error = qboot_spawn(self->spawner, job->envp, fd, -1, &job->pid);
        close(fd);
        int result = report(self, job);
        qboot_job_free(job);
        return result < 0 ? -2 : 0;
    }
    /* The pool's threads wait for the kernel's vfork (until the child's exec) while this
     * one goes on accepting. */
    qboot_pool_queue(self->pool, job);
    self->in_flight++;
    return 0;
}

/* --- one connection --------------------------------------------------------------------- */

/* Out of memory for one connection: it is dropped (logged as a warning) in a session of
 * its own, the server goes on. */
static void drop_for_memory(ConnectionLoop *self, int fd, const char *client, int in_session)
{
    PyErr_Clear();
    if (!in_session)
        session_started(self);
    static const char line[] = PROGRAM ": warning: dropping connection, out of memory\n";
    refuse(self, fd, client, self->drop_status, 1, line, sizeof line - 1);
}

/* The last value the rule gives NAME (`+NAME=value`): where it starts in the rule and
 * its length, or NULL. */
static const char *rule_value(const unsigned char *rule, uint32_t rule_length, const char *name,
                              Py_ssize_t *value_length)
{
    size_t name_length = strlen(name);
    const char *found = NULL;
    for (uint32_t at = 0; rule && at < rule_length;) {
        const unsigned char *end = memchr(rule + at, 0, rule_length - at);
        if (!end)
            break;
        size_t length = (size_t)(end - (rule + at));
        if (length > name_length + 1 && rule[at] == '+' &&
            memcmp(rule + at + 1, name, name_length) == 0 && rule[at + 1 + name_length] == '=') {
            found = (const char *)rule + at + name_length + 2;
            *value_length = (Py_ssize_t)(length - name_length - 2);
        }
        at = (uint32_t)(end - rule) + 1;
    }
    return found;
}

/* Ask Python's screen(fd, local_ip, local_port, remote_ip, remote_port, local_host,
 * remote_host, remote_info, the rule's RBLSMTPD, the rule's TCPREMOTEIP): 1 clean now
 * (ours again), 0 Python's (held for its verdict, or listed and talked to there), -1 with
 * an exception (the fd Python's). */
static int screen(ConnectionLoop *self, int fd, const char *local_ip, int local_port,
                  const char *remote_ip, int remote_port, const Names *names,
                  const unsigned char *rule, uint32_t rule_length)
{
    Py_ssize_t rblsmtpd_length = 0, ip_length = 0;
    const char *rblsmtpd = rule_value(rule, rule_length, "RBLSMTPD", &rblsmtpd_length);
    const char *ip = rule_value(rule, rule_length, "TCPREMOTEIP", &ip_length);
    PyObject *verdict = PyObject_CallFunction(self->screen, "isisiyyyy#y#", fd, local_ip,
                                              local_port, remote_ip, remote_port, names->local,
                                              names->remote, names->info, rblsmtpd,
                                              rblsmtpd_length, ip, ip_length);
    if (!verdict)
        return -1;
    int clean = verdict == Py_True;
    Py_DECREF(verdict);
    return clean;
}

/* A connection with its names: a session, the rules, then deny or spawn. Returns 0, or
 * -1 with a Python exception (the rules' reload failed, or memory after the spawn). */
static int decided(ConnectionLoop *self, int fd, const char *local_ip, int local_port,
                   const char *remote_ip, int remote_port, const Names *names, int queue_empty,
                   int screened)
{
    const char *client = unmapped(remote_ip);
    const char *local_logged = self->unmap_in_log ? unmapped(local_ip) : local_ip;
    const char *remote_logged = self->unmap_in_log ? client : remote_ip;
    const unsigned char *rule = NULL;
    uint32_t rule_length = 0;
    if (self->rules_path) {
        if (rules_refresh(self) < 0) {
            close(fd);
            return -1;
        }
        if (!self->rules_data) {
            if (self->drop_line) {
                session_started(self);
                refuse(self, fd, client, self->drop_status, 1, PyBytes_AS_STRING(self->drop_line),
                       (size_t)PyBytes_GET_SIZE(self->drop_line));
                return 0;
            }
        } else {
            size_t room = strlen(client) + 4 + (names->remote ? strlen(names->remote) : 0) +
                          (names->info ? strlen(names->info) : 0);
            char *key = PyMem_Malloc(room);
            if (!key) {
                drop_for_memory(self, fd, client, 0);
                return 0;
            }
            int found = rules_find(self, client, names->remote, names->info, key, &rule,
                                   &rule_length);
            PyMem_Free(key);
            if (found < 0) {
                session_started(self);
                refuse(self, fd, client, self->drop_status, 1,
                       PyBytes_AS_STRING(self->format_error_line),
                       (size_t)PyBytes_GET_SIZE(self->format_error_line));
                return 0;
            }
        }
    }
    /* Deny: a record starting with D (after any + records, as rules.decide reads them). */
    for (uint32_t at = 0; rule && at < rule_length;) {
        const unsigned char *end = memchr(rule + at, 0, rule_length - at);
        if (!end)
            break;
        if (rule[at] == 'D') {
            self->denied++;
            char line[1024];
            size_t length = format_line(line, sizeof line,
                                        PROGRAM ": deny %d %s:%s:%d %s:%s:%s:%d\n",
                                        (int)self->server_pid, names->local_log, local_logged,
                                        local_port, names->remote_log, remote_logged,
                                        names->info_log, remote_port);
            session_started(self);
            refuse(self, fd, client, self->deny_status, 2, line, length);
            return 0;
        }
        at += (uint32_t)(end - (rule + at)) + 1;
    }
    /* The in-core rblsmtpd's verdict, without a session: Python's from here unless it is
     * known and clean. */
    if (self->screen && !screened) {
        int clean = screen(self, fd, local_ip, local_port, remote_ip, remote_port, names, rule,
                           rule_length);
        if (clean <= 0)
            return clean;
    }
    session_started(self);
    /* "client\0ok-line-after-the-pid" for the report's log lines */
    size_t client_length = strlen(client);
    size_t note_size = client_length + 1 + 1024;
    char *note = PyMem_RawMalloc(note_size);
    if (!note) {
        drop_for_memory(self, fd, client, 1);
        return 0;
    }
    memcpy(note, client, client_length + 1);
    format_line(note + client_length + 1, note_size - client_length - 1, "%s:%s:%d %s:%s:%s:%d",
                names->local_log, local_logged, local_port, names->remote_log, remote_logged,
                names->info_log, remote_port);
    int spawned = spawn_connection(self, fd, local_ip, local_port, remote_ip, remote_port, names,
                                   rule, rule_length, note, queue_empty);
    if (spawned == -1) {
        if (!PyErr_ExceptionMatches(PyExc_MemoryError)) {
            close(fd);
            session_over(self, client);
            return -1;
        }
        drop_for_memory(self, fd, client, 1);
        return 0;
    }
    return spawned < 0 ? -1 : 0;
}

/* The 6-tuple hold() or admit() gives as Names: bytes or None each. 0, or -1 (TypeError). */
static int names_from(PyObject *tuple, Names *names)
{
    const char **fields[6] = {&names->local, &names->local_log, &names->remote,
                              &names->remote_log, &names->info, &names->info_log};
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) != 6) {
        PyErr_SetString(PyExc_TypeError, "names: a tuple of 6 bytes or None");
        return -1;
    }
    for (Py_ssize_t i = 0; i < 6; i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        if (item == Py_None) {
            *fields[i] = i % 2 ? "" : NULL;
            continue;
        }
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "names: a tuple of 6 bytes or None");
            return -1;
        }
        *fields[i] = PyBytes_AS_STRING(item);
    }
    return 0;
}

static int connection(ConnectionLoop *self, Listener *listener, int fd,
                      const struct sockaddr_storage *address, int queue_empty)
{
    char remote_ip[INET6_ADDRSTRLEN], local_ip[INET6_ADDRSTRLEN];
    int remote_port, local_port;
    if (format_address(address, remote_ip, &remote_port) != 0) {
        close(fd);
        return 0;
    }
    if (listener->fixed) {
        memcpy(local_ip, listener->ip, sizeof local_ip);
        local_port = listener->port;
    } else {
        struct sockaddr_storage local;
        socklen_t size = sizeof local;
        if (getsockname(fd, (struct sockaddr *)&local, &size) != 0 ||
            format_address(&local, local_ip, &local_port) != 0) {
            close(fd);
            return 0;
        }
    }
    Names names = {NULL, "", NULL, "", NULL, ""};
    if (self->local_host != Py_None) {
        names.local = PyBytes_AS_STRING(self->local_host);
        names.local_log = PyBytes_AS_STRING(self->local_host_log);
    }
    /* hold() first: a connection it refuses (a rate) is closed without the banner. Then
     * the fd is Python's (an exception too: it may have taken it) unless it gives the
     * names back at once. */
    PyObject *held = NULL;
    if (self->hold) {
        held = PyObject_CallFunction(self->hold, "isisi", fd, local_ip, local_port, remote_ip,
                                     remote_port);
        if (!held)
            return -1;
        if (held == Py_None) { /* refused, and closed */
            Py_DECREF(held);
            return 0;
        }
    }
    int one = 1;
    if (self->nodelay)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (self->kill_ip_options && address->ss_family == AF_INET)
        setsockopt(fd, IPPROTO_IP, IP_OPTIONS, NULL, 0);
    if (PyBytes_GET_SIZE(self->banner))
        (void)send(fd, PyBytes_AS_STRING(self->banner), (size_t)PyBytes_GET_SIZE(self->banner),
                   MSG_DONTWAIT | MSG_NOSIGNAL);
    if (!held)
        return decided(self, fd, local_ip, local_port, remote_ip, remote_port, &names,
                       queue_empty, 0);
    int result = 0;
    if (held == Py_True) /* held for its lookups: Python has a new deadline */
        self->held_since_run = 1;
    else if (names_from(held, &names) < 0)
        result = -1; /* the fd stays Python's, as with an exception */
    else
        result = decided(self, fd, local_ip, local_port, remote_ip, remote_port, &names,
                         queue_empty, 0);
    Py_DECREF(held);
    return result;
}

/* Sessions for the connections handed back decided, while slots are free. */
static int admit_queued(ConnectionLoop *self)
{
    while (self->admitted_head && self->running < self->limit) {
        Admitted *next = self->admitted_head;
        self->admitted_head = next->next;
        if (!self->admitted_head)
            self->admitted_tail = NULL;
        self->admitted_count--;
        Names names;
        int result = names_from(next->names, &names);
        if (result == 0)
            result = decided(self, next->fd, next->local_ip, next->local_port, next->remote_ip,
                             next->remote_port, &names, 0, next->screened);
        else
            close(next->fd);
        Py_DECREF(next->names);
        PyMem_Free(next);
        if (result < 0)
            return -1;
    }
    return 0;
}

/* Listeners in the epoll set exactly when a connection may be taken. */
static int update_watch(ConnectionLoop *self)
{
    if (self->epoll_fd < 0)
        return 0;
    int wanted = !self->paused && !self->stopped &&
                 self->running + self->admitted_count < self->limit;
    if (wanted == self->watching)
        return 0;
    for (int i = 0; i < self->listener_count; i++) {
        struct epoll_event event = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        int done = wanted ? epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, self->listeners[i].fd, &event)
                          : epoll_ctl(self->epoll_fd, EPOLL_CTL_DEL, self->listeners[i].fd, NULL);
        if (done != 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    self->watching = wanted;
    return 0;
}

/* Room for one more connection, besides `held` accepted and not yet counted? */
static int may_accept(const ConnectionLoop *self, int held)
{
    return !self->paused && !self->stopped &&
           self->running + self->admitted_count + held < self->limit;
}

/* The next connection's fd, or -1: nothing waiting (or EINTR), or *resource set to the
 * errno of running out of fds or memory. A client gone before its accept is skipped, a
 * few times at most: an error that stays (a listener another holder of the socket shut
 * down: EINVAL, and epoll reports it for ever) must not keep this thread from the
 * signals, as the Python loop's 16 tries do not. */
static int accept_one(ConnectionLoop *self, Listener *listener, struct sockaddr_storage *address,
                      int *resource)
{
    for (int tries = 0; tries < self->accepts_per_wake; tries++) {
        socklen_t size = sizeof *address;
        /* blocking, as the child wants it */
        int fd = accept4(listener->fd, (struct sockaddr *)address, &size, SOCK_CLOEXEC);
        if (fd >= 0) {
            self->accepted++;
            return fd;
        }
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            *resource = errno;
            return -1;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return -1;
        /* ECONNABORTED, EPROTO, EPERM: that client is gone, the next one may not be */
    }
    return -1;
}

static double monotonic(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}


/* run(timeout) -> (outcome, errno): serve until a signal other than SIGCHLD arrives
 * (1), accept() runs out of resources (2, with its errno), the last session after
 * stop() has ended (3: the drain is over), or timeout seconds have passed (0; a
 * negative timeout: no limit). */
static PyObject *loop_run(ConnectionLoop *self, PyObject *arg)
{
    double timeout = PyFloat_AsDouble(arg);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    if (self->epoll_fd < 0)
        return PyErr_Format(PyExc_RuntimeError, "start() first");
    double deadline = timeout < 0 ? -1.0 : monotonic() + timeout;
    for (;;) {
        if (admit_queued(self) < 0)
            return NULL;
        if (self->stopped && self->running == 0 && self->admitted_count == 0)
            return Py_BuildValue("(ii)", RUN_DRAINED, 0); /* nothing left to wait for */
        if (update_watch(self) < 0)
            return NULL;
        int wait_ms = -1;
        if (deadline >= 0) {
            double left = deadline - monotonic();
            if (left <= 0)
                return Py_BuildValue("(ii)", RUN_TIMEOUT, 0);
            wait_ms = (int)(left * 1000.0) + 1;
        }
        struct epoll_event events[16];
        int ready = epoll_wait(self->epoll_fd, events, 16, wait_ms);
        if (ready < 0) {
            if (errno == EINTR)
                continue; /* the handler wrote the signal to the wake-up fd */
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        int children = 0, signals = 0, reports = 0, watched = 0;
        for (int e = 0; e < ready; e++) {
            if (events[e].data.u32 == POOL_TAG)
                reports = 1;
            if (events[e].data.u32 == WATCHED_TAG)
                watched = 1;
            if (events[e].data.u32 == CHILD_TAG) {
                struct signalfd_siginfo infos[16];
                while (read(self->child_fd, infos, sizeof infos) > 0) {
                }
                children = 1;
            }
            if (events[e].data.u32 != WAKE_TAG)
                continue;
            /* a signal for Python (SIGCHLD is blocked here: it comes by child_fd) */
            unsigned char numbers[256];
            while (read(self->wake_fd, numbers, sizeof numbers) > 0)
                signals = 1;
        }
        /* reports first: a child reaped before its report waits for it */
        if (reports && spawns_reported(self) < 0)
            return NULL;
        if (children && reap(self) < 0)
            return NULL;
        for (int e = 0; e < ready; e++) {
            uint32_t index = events[e].data.u32;
            if (index >= FIRST_TAG || index >= (uint32_t)self->listener_count)
                continue;
            Listener *listener = &self->listeners[index];
            /* One accepted ahead: a connection with nothing behind it in the queue, and
             * no other session, is spawned by this thread itself (see spawn_connection). */
            struct sockaddr_storage held, ahead;
            int resource = 0;
            int held_fd = may_accept(self, 0) ? accept_one(self, listener, &held, &resource) : -1;
            for (int n = 1; held_fd >= 0; n++) {
                int ahead_fd = -1, queue_empty = 0;
                if (n < self->accepts_per_wake && may_accept(self, 1)) {
                    ahead_fd = accept_one(self, listener, &ahead, &resource);
                    queue_empty = ahead_fd < 0 && !resource;
                }
                if (connection(self, listener, held_fd, &held, queue_empty) < 0) {
                    if (ahead_fd >= 0)
                        close(ahead_fd);
                    return NULL;
                }
                held_fd = ahead_fd;
                held = ahead;
            }
            if (resource)
                return Py_BuildValue("(ii)", RUN_RESOURCE, resource);
        }
        if (signals) {
            /* Python's handlers run now, so the loop finds what they noted. */
            if (PyErr_CheckSignals() < 0)
                return NULL;
            return Py_BuildValue("(ii)", RUN_SIGNAL, 0);
        }
        if (watched || self->held_since_run) {
            self->held_since_run = 0;
            return Py_BuildValue("(ii)", RUN_WATCHED, 0);
        }
    }
}

static PyObject *loop_close(ConnectionLoop *self, PyObject *unused);

/* SIGCHLD through a signalfd: no signal frame and no wake-up byte per child, only an fd
 * that epoll reports. Python's handler for it does not run while the ConnectionLoop is started. */
static PyObject *loop_start(ConnectionLoop *self, PyObject *unused)
{
    if (self->epoll_fd >= 0)
        return PyErr_Format(PyExc_RuntimeError, "the ConnectionLoop is started");
    sigset_t child;
    sigemptyset(&child);
    sigaddset(&child, SIGCHLD);
    int error = pthread_sigmask(SIG_BLOCK, &child, &self->saved_mask);
    if (error != 0) {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->child_fd = signalfd(-1, &child, SFD_NONBLOCK | SFD_CLOEXEC);
    self->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event wake = {.events = EPOLLIN, .data.u32 = WAKE_TAG};
    struct epoll_event pool = {.events = EPOLLIN, .data.u32 = POOL_TAG};
    struct epoll_event children = {.events = EPOLLIN, .data.u32 = CHILD_TAG};
    if (self->child_fd < 0 || self->epoll_fd < 0 ||
        epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, self->wake_fd, &wake) != 0 ||
        epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, self->pool->event_fd, &pool) != 0 ||
        epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, self->child_fd, &children) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        PyObject *closed = loop_close(self, NULL);
        Py_XDECREF(closed);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *loop_close(ConnectionLoop *self, PyObject *unused)
{
    if (self->epoll_fd >= 0)
        close(self->epoll_fd);
    if (self->child_fd >= 0) {
        close(self->child_fd);
        pthread_sigmask(SIG_SETMASK, &self->saved_mask, NULL);
    }
    self->epoll_fd = self->child_fd = -1;
    self->watching = 0;
    Py_RETURN_NONE;
}

/* add_listener(fd, local): local (ip, port) for a listener bound to one address, None
 * for a wildcard (each connection's local address is asked for). */
static PyObject *loop_add_listener(ConnectionLoop *self, PyObject *args)
{
    int fd;
    PyObject *local;
    if (!PyArg_ParseTuple(args, "iO", &fd, &local))
        return NULL;
    Listener listener = {.fd = fd};
    if (local != Py_None) {
        const char *ip;
        if (!PyArg_ParseTuple(local, "si", &ip, &listener.port))
            return NULL;
        if (strlen(ip) >= sizeof listener.ip)
            return PyErr_Format(PyExc_ValueError, "not an IP address: %s", ip);
        strcpy(listener.ip, ip);
        listener.fixed = 1;
    }
    if (self->watching)
        return PyErr_Format(PyExc_RuntimeError, "add listeners before run()");
    Listener *grown = PyMem_Realloc(self->listeners,
                                    sizeof(Listener) * (size_t)(self->listener_count + 1));
    if (!grown)
        return PyErr_NoMemory();
    self->listeners = grown;
    self->listeners[self->listener_count++] = listener;
    Py_RETURN_NONE;
}

/* set_rules(path, reload, format_error_line): path None: no rules, every client allowed. */
static PyObject *loop_set_rules(ConnectionLoop *self, PyObject *args)
{
    PyObject *path, *reload, *format_error_line;
    if (!PyArg_ParseTuple(args, "OOS", &path, &reload, &format_error_line))
        return NULL;
    if (path != Py_None && (!PyBytes_Check(path) || !PyCallable_Check(reload)))
        return PyErr_Format(PyExc_TypeError, "set_rules(bytes, callable, bytes)");
    Py_XSETREF(self->rules_path, path == Py_None ? NULL : Py_NewRef(path));
    Py_XSETREF(self->reload, Py_NewRef(reload));
    Py_XSETREF(self->format_error_line, Py_NewRef(format_error_line));
    Py_CLEAR(self->rules_data);
    Py_CLEAR(self->drop_line);
    self->have_identity = 0;
    Py_RETURN_NONE;
}

static PyObject *loop_pause(ConnectionLoop *self, PyObject *arg)
{
    int paused = PyObject_IsTrue(arg);
    if (paused < 0)
        return NULL;
    self->paused = paused;
    if (update_watch(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* SIGTERM: no more accepting; run() goes on reaping. */
static PyObject *loop_stop(ConnectionLoop *self, PyObject *unused)
{
    self->stopped = 1;
    if (update_watch(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *loop_counts(ConnectionLoop *self, PyObject *unused)
{
    return Py_BuildValue("(illil)", self->running, self->served, self->denied,
                         self->admitted_count, self->accepted);
}

/* watch(fd): run() returns RUN_WATCHED when fd is readable (Python's lookups). */
static PyObject *loop_watch(ConnectionLoop *self, PyObject *arg)
{
    int fd;
    if (qboot_as_int(arg, &fd) < 0)
        return NULL;
    if (self->epoll_fd < 0)
        return PyErr_Format(PyExc_RuntimeError, "start() first");
    struct epoll_event event = {.events = EPOLLIN, .data.u32 = WATCHED_TAG};
    if (epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, fd, &event) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* admit(fd, local_ip, local_port, remote_ip, remote_port, names, screened=False): a
 * connection hold() or screen() took, handed back decided with its names (screened: the
 * in-core rblsmtpd found it clean); the ConnectionLoop's again, its session started now or when a
 * slot is free. */
static PyObject *loop_admit(ConnectionLoop *self, PyObject *args)
{
    int fd, local_port, remote_port;
    const char *local_ip, *remote_ip;
    PyObject *names_tuple;
    int screened = 0;
    if (!PyArg_ParseTuple(args, "isisiO!|p", &fd, &local_ip, &local_port, &remote_ip,
                          &remote_port, &PyTuple_Type, &names_tuple, &screened))
        return NULL;
    Names names;
    if (strlen(local_ip) >= INET6_ADDRSTRLEN || strlen(remote_ip) >= INET6_ADDRSTRLEN)
        return PyErr_Format(PyExc_ValueError, "not an IP address");
    if (names_from(names_tuple, &names) < 0)
        return NULL;
    if (self->running < self->limit && !self->admitted_head) {
        if (decided(self, fd, local_ip, local_port, remote_ip, remote_port, &names, 0,
                    screened) < 0)
            return NULL;
        if (update_watch(self) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    Admitted *waiting = PyMem_Calloc(1, sizeof(Admitted));
    if (!waiting)
        return PyErr_NoMemory();
    waiting->fd = fd;
    strcpy(waiting->local_ip, local_ip);
    strcpy(waiting->remote_ip, remote_ip);
    waiting->local_port = local_port;
    waiting->remote_port = remote_port;
    waiting->names = Py_NewRef(names_tuple);
    waiting->screened = screened;
    if (self->admitted_tail)
        self->admitted_tail->next = waiting;
    else
        self->admitted_head = waiting;
    self->admitted_tail = waiting;
    self->admitted_count++;
    if (update_watch(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int loop_init(ConnectionLoop *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"pool", "wake_fd", "log_fd", "limit", "verbosity",
                               "local_host", "local_host_log", "banner", "program_log",
                               "ipv6_env", "nodelay", "kill_ip_options", "unmap_in_log",
                               "hold", "deny_status", "drop_status", "accepts_per_wake", "ended",
                               "screen", NULL};
    PyObject *pool = NULL, *local_host = NULL, *local_host_log = NULL, *banner = NULL,
             *program_log = NULL, *hold = Py_None, *ended = Py_None,
             *screen_ = Py_None;
    int wake_fd = -1, log_fd = -1, limit = 0, verbosity = 0, ipv6_env = 0, nodelay = 0,
        kill_ip_options = 0, unmap_in_log = 0, deny_status = 0, drop_status = 0,
        accepts_per_wake = 0;
    if (self->pool) {
        PyErr_SetString(PyExc_RuntimeError, "ConnectionLoop initialised twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$O!iiiiOSSSppppOiiiOO", keywords, &SpawnPoolType,
                                     &pool, &wake_fd, &log_fd, &limit, &verbosity,
                                     &local_host, &local_host_log, &banner, &program_log,
                                     &ipv6_env, &nodelay, &kill_ip_options, &unmap_in_log,
                                     &hold, &deny_status, &drop_status, &accepts_per_wake,
                                     &ended, &screen_))
        return -1;
    if (!pool || !local_host || !local_host_log || !banner || !program_log) {
        PyErr_SetString(PyExc_TypeError, "ConnectionLoop(): pool, local_host, local_host_log, banner and "
                                         "program_log are required");
        return -1;
    }
    if ((local_host != Py_None && !PyBytes_Check(local_host)) ||
        (hold != Py_None && !PyCallable_Check(hold)) ||
        (ended != Py_None && !PyCallable_Check(ended)) ||
        (screen_ != Py_None && !PyCallable_Check(screen_))) {
        PyErr_SetString(PyExc_TypeError, "local_host: bytes or None; hold: callable or None");
        return -1;
    }
    if (local_host == Py_None && hold == Py_None) {
        PyErr_SetString(PyExc_ValueError, "without local_host, hold() gives the names");
        return -1;
    }
    if (!((SpawnPool *)pool)->ready || ((SpawnPool *)pool)->stopping) {
        PyErr_SetString(PyExc_ValueError, "the SpawnPool is not running");
        return -1;
    }
    if (limit < 1 || accepts_per_wake < 1) {
        PyErr_SetString(PyExc_ValueError, "limit and accepts_per_wake: at least 1");
        return -1;
    }
    self->pool = (SpawnPool *)Py_NewRef(pool);
    self->spawner = self->pool->spawner;
    self->local_host = Py_NewRef(local_host);
    self->local_host_log = Py_NewRef(local_host_log);
    self->banner = Py_NewRef(banner);
    self->program_log = Py_NewRef(program_log);
    self->hold = hold == Py_None ? NULL : Py_NewRef(hold);
    self->ended = ended == Py_None ? NULL : Py_NewRef(ended);
    self->screen = screen_ == Py_None ? NULL : Py_NewRef(screen_);
    self->deny_status = deny_status;
    self->drop_status = drop_status;
    self->accepts_per_wake = accepts_per_wake;
    self->wake_fd = wake_fd;
    self->log_fd = log_fd;
    self->limit = limit;
    self->verbosity = verbosity;
    self->ipv6_env = ipv6_env;
    self->nodelay = nodelay;
    self->kill_ip_options = kill_ip_options;
    self->unmap_in_log = unmap_in_log;
    self->server_pid = getpid();
    return 0;
}

static PyObject *loop_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    ConnectionLoop *self = (ConnectionLoop *)type->tp_alloc(type, 0);
    if (self)
        self->epoll_fd = self->child_fd = -1;
    return (PyObject *)self;
}

/* The callables (reload, hold) are bound methods of the server that holds the ConnectionLoop. */
static int loop_traverse(ConnectionLoop *self, visitproc visit, void *arg)
{
    Py_VISIT(self->pool);
    Py_VISIT(self->reload);
    Py_VISIT(self->hold);
    Py_VISIT(self->ended);
    Py_VISIT(self->screen);
    for (Admitted *waiting = self->admitted_head; waiting; waiting = waiting->next)
        Py_VISIT(waiting->names);
    return 0;
}

static int loop_clear(ConnectionLoop *self)
{
    Py_CLEAR(self->reload);
    Py_CLEAR(self->hold);
    Py_CLEAR(self->ended);
    Py_CLEAR(self->screen);
    return 0;
}

static void loop_dealloc(ConnectionLoop *self)
{
    PyObject_GC_UnTrack(self);
    PyObject *closed = loop_close(self, NULL);
    Py_XDECREF(closed);
    PyMem_Free(self->listeners);
    PyMem_Free(self->reported.slots);
    PyMem_Free(self->early);
    Py_XDECREF(self->pool);
    Py_XDECREF(self->local_host);
    Py_XDECREF(self->local_host_log);
    Py_XDECREF(self->banner);
    Py_XDECREF(self->program_log);
    Py_XDECREF(self->rules_path);
    Py_XDECREF(self->reload);
    Py_XDECREF(self->rules_data);
    Py_XDECREF(self->drop_line);
    Py_XDECREF(self->format_error_line);
    Py_XDECREF(self->hold);
    Py_XDECREF(self->ended);
    Py_XDECREF(self->screen);
    for (Admitted *next; self->admitted_head; self->admitted_head = next) {
        next = self->admitted_head->next;
        close(self->admitted_head->fd);
        Py_DECREF(self->admitted_head->names);
        PyMem_Free(self->admitted_head);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef loop_methods[] = {
    {"start", (PyCFunction)loop_start, METH_NOARGS, "its epoll fd, watching the wake-up fd"},
    {"close", (PyCFunction)loop_close, METH_NOARGS, "close what start() opened"},
    {"add_listener", (PyCFunction)loop_add_listener, METH_VARARGS,
     "add_listener(fd, (ip, port) or None for a wildcard)"},
    {"set_rules", (PyCFunction)loop_set_rules, METH_VARARGS,
     "set_rules(path or None, reload, format_error_line)"},
    {"run", (PyCFunction)loop_run, METH_O, "run(timeout) -> (outcome, errno)"},
    {"pause", (PyCFunction)loop_pause, METH_O, "pause(flag): stop or go on accepting"},
    {"stop", (PyCFunction)loop_stop, METH_NOARGS, "accept no more; run() still reaps"},
    {"counts", (PyCFunction)loop_counts, METH_NOARGS,
     "(running, served, denied, admitted waiting for a slot, accepted)"},
    {"watch", (PyCFunction)loop_watch, METH_O, "watch(fd): run() returns when it is readable"},
    {"admit", (PyCFunction)loop_admit, METH_VARARGS,
     "admit(fd, local_ip, local_port, remote_ip, remote_port, names, screened=False): a held "
     "connection back"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject ConnectionLoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qboot_systemd.tcpsrv._core.ConnectionLoop",
    .tp_basicsize = sizeof(ConnectionLoop),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)loop_traverse,
    .tp_clear = (inquiry)loop_clear,
    .tp_doc = "ConnectionLoop(...): accept, rules, environment, spawn and reap in C.",
    .tp_new = loop_new,
    .tp_init = (initproc)loop_init,
    .tp_dealloc = (destructor)loop_dealloc,
    .tp_methods = loop_methods,
};
