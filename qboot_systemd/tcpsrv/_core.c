/* The per-connection system calls of qboot-tcpsrv's accept loop, in C.
 *
 * accept4() giving an fd and (ip, port) without a socket object; close, setsockopt and a
 * MSG_DONTWAIT send that keep the GIL (they cannot block, and each release of the GIL is a
 * thread switch while spawner threads wait for it); getsockname() for wildcard listeners;
 * and a Spawner: a vfork-style clone() and execve with the GIL released, the command line,
 * the server's own environment and the program's places on PATH laid out once.
 * spawn.py and syscalls.py hold the pure-Python equivalents (QBOOT_NO_EXTENSION=1).
 */
#include "_core.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <netinet/in.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* An int argument (PyLong_AsInt is public only from Python 3.13 on). */
int qboot_as_int(PyObject *object, int *out)
{
    long value = PyLong_AsLong(object);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (value < INT_MIN || value > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value out of range for a C int");
        return -1;
    }
    *out = (int)value;
    return 0;
}

/* (ip, port) of a socket address, or None for a family other than IPv4 and IPv6. */
static PyObject *address_tuple(const struct sockaddr_storage *address)
{
    char text[INET6_ADDRSTRLEN];
    int port;
    if (address->ss_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)address;
        if (!inet_ntop(AF_INET, &in4->sin_addr, text, sizeof text))
            return PyErr_SetFromErrno(PyExc_OSError);
        port = ntohs(in4->sin_port);
    } else if (address->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)address;
        if (!inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text))
            return PyErr_SetFromErrno(PyExc_OSError);
        port = ntohs(in6->sin6_port);
    } else {
        errno = EAFNOSUPPORT;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(si)", text, port);
}

static PyObject *core_accept(PyObject *self, PyObject *arg)
{
    int listener;
    if (qboot_as_int(arg, &listener) < 0)
        return NULL;
    struct sockaddr_storage address;
    socklen_t size = sizeof address;
    /* The listener is non-blocking: this never waits, so the GIL stays. The new fd is
     * blocking (no SOCK_NONBLOCK), as the child wants it. */
    int fd = accept4(listener, (struct sockaddr *)&address, &size, SOCK_CLOEXEC);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    PyObject *pair = address_tuple(&address);
    if (!pair) {
        close(fd);
        return NULL;
    }
    PyObject *result = Py_BuildValue("(iN)", fd, pair);
    if (!result)
        close(fd);
    return result;
}

static PyObject *core_local_address(PyObject *self, PyObject *arg)
{
    int fd;
    if (qboot_as_int(arg, &fd) < 0)
        return NULL;
    struct sockaddr_storage address;
    socklen_t size = sizeof address;
    if (getsockname(fd, (struct sockaddr *)&address, &size) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return address_tuple(&address);
}

static PyObject *core_close(PyObject *self, PyObject *arg)
{
    int fd;
    if (qboot_as_int(arg, &fd) < 0)
        return NULL;
    close(fd); /* EINTR/EIO: the fd is gone either way on Linux */
    Py_RETURN_NONE;
}

/* setsockopt with an int, or with an empty value (None); errors ignored, as tcpserver. */
static PyObject *core_set_option(PyObject *self, PyObject *args)
{
    int fd, level, name;
    PyObject *value;
    if (!PyArg_ParseTuple(args, "iiiO", &fd, &level, &name, &value))
        return NULL;
    if (value == Py_None) {
        setsockopt(fd, level, name, NULL, 0);
    } else {
        int number;
        if (qboot_as_int(value, &number) < 0)
            return NULL;
        setsockopt(fd, level, name, &number, sizeof number);
    }
    Py_RETURN_NONE;
}

/* Send what fits without waiting; errors ignored. */
static PyObject *core_send_now(PyObject *self, PyObject *args)
{
    int fd;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "iy*", &fd, &data))
        return NULL;
    (void)send(fd, data.buf, (size_t)data.len, MSG_DONTWAIT | MSG_NOSIGNAL);
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

/* cdb's hash of a key, as djb's cdb_hash(): the rules lookup runs it a few times per
 * connection. */
static PyObject *core_djb_hash(PyObject *self, PyObject *arg)
{
    Py_buffer key;
    if (PyObject_GetBuffer(arg, &key, PyBUF_SIMPLE) < 0)
        return NULL;
    uint32_t hash = 5381;
    const unsigned char *bytes = key.buf;
    for (Py_ssize_t i = 0; i < key.len; i++)
        hash = ((hash << 5) + hash) ^ bytes[i];
    PyBuffer_Release(&key);
    return PyLong_FromUnsignedLong(hash);
}

/* Give the C heap's free pages back to the system. OpenSSL's per-handshake state is
 * freed into glibc's heap in an order that leaves most of it unreturnable, so after a
 * burst of handshakes the server's RSS stays at the burst's peak; malloc_trim() releases
 * the free pages inside the heap too. True when memory was released; False elsewhere. */
static PyObject *core_trim_heap(PyObject *self, PyObject *Py_UNUSED(ignored))
{
#ifdef __GLIBC__
    int released;
    Py_BEGIN_ALLOW_THREADS
    released = malloc_trim(0);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(released);
#else
    Py_RETURN_FALSE;
#endif
}

/* --- Spawner -------------------------------------------------------------------------- */


/* A list or tuple of bytes as a new tuple (no str, nothing else). */
static PyObject *bytes_tuple(PyObject *sequence, const char *what)
{
    PyObject *items = PySequence_Tuple(sequence);
    if (!items)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(items); i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(items, i))) {
            Py_DECREF(items);
            return PyErr_Format(PyExc_TypeError, "%s must hold bytes", what);
        }
    }
    return items;
}

/* Where execve looks for the program, as execvp and tcpserver's pathexec do: the name
 * itself if it has a '/', else each directory of PATH ("/bin:/usr/bin" without one; an
 * empty entry is the current directory). Made once: the server's PATH does not change. */
static int spawner_find_candidates(Spawner *self)
{
    const char *file = self->file_path;
    const char *path = strchr(file, '/') ? "" : getenv("PATH");
    if (!path)
        path = "/bin:/usr/bin";
    size_t entries = 1, file_length = strlen(file);
    for (const char *at = path; *at; at++)
        entries += *at == ':';
    self->candidates = PyMem_Calloc(entries + 1, sizeof(char *));
    self->candidate_strings = PyMem_Malloc(strlen(path) + entries * (file_length + 3) + 1);
    if (!self->candidates || !self->candidate_strings) {
        PyErr_NoMemory();
        return -1;
    }
    if (strchr(file, '/')) {
        self->candidates[0] = (char *)file;
        return 0;
    }
    char *cursor = self->candidate_strings;
    size_t count = 0;
    for (const char *start = path;; start++) {
        const char *end = strchr(start, ':');
        size_t length = end ? (size_t)(end - start) : strlen(start);
        if (length == 0) {
            memcpy(cursor, "./", 2);
            length = 2;
        } else {
            memcpy(cursor, start, length);
            cursor[length++] = '/';
        }
        memcpy(cursor + length, file, file_length + 1);
        self->candidates[count++] = cursor;
        cursor += length + file_length + 1;
        if (!end)
            break;
        start = end;
    }
    return 0;
}

static int spawner_init(Spawner *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"argv", "base_env", "default_signals", NULL};
    PyObject *argv, *base, *signals;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO", keywords, &argv, &base, &signals))
        return -1;
    if (self->argv) {
        PyErr_SetString(PyExc_RuntimeError, "Spawner initialised twice");
        return -1;
    }
    self->argv = bytes_tuple(argv, "argv");
    if (!self->argv)
        return -1;
    Py_ssize_t count = PyTuple_GET_SIZE(self->argv);
    if (count == 0) {
        PyErr_SetString(PyExc_ValueError, "argv is empty");
        return -1;
    }
    self->file = Py_NewRef(PyTuple_GET_ITEM(self->argv, 0));
    self->file_path = PyBytes_AS_STRING(self->file);
    self->base = bytes_tuple(base, "base_env");
    if (!self->base)
        return -1;
    self->argv_pointers = PyMem_Calloc((size_t)count + 1, sizeof(char *));
    if (!self->argv_pointers) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++)
        self->argv_pointers[i] = PyBytes_AS_STRING(PyTuple_GET_ITEM(self->argv, i));

    sigset_t defaults;
    sigemptyset(&defaults);
    PyObject *numbers = PySequence_Tuple(signals);
    if (!numbers)
        return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(numbers); i++) {
        int number;
        if (qboot_as_int(PyTuple_GET_ITEM(numbers, i), &number) < 0) {
            Py_DECREF(numbers);
            return -1;
        }
        /* glibc refuses (EINVAL) the signals it keeps for itself (32 and 33 for
         * threads): those stay out of the set, and out of the program's reach anyway. */
        if (sigaddset(&defaults, number) != 0 && errno != EINVAL) {
            Py_DECREF(numbers);
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    Py_DECREF(numbers);
    self->defaults = defaults;
    if (spawner_find_candidates(self) < 0)
        return -1;
    return 0;
}

static void spawner_dealloc(Spawner *self)
{
    PyMem_Free(self->candidates);
    PyMem_Free(self->candidate_strings);
    PyMem_Free(self->argv_pointers);
    Py_XDECREF(self->file);
    Py_XDECREF(self->argv);
    Py_XDECREF(self->base);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The child, from clone() to execve, on its own stack in the parent's memory: only
 * system calls, nothing that takes a lock or allocates. Its signals arrive blocked (the
 * parent blocked them all for the clone); the handlers it inherited are reset before they
 * are unblocked, so none of the server's runs here. */
typedef struct {
    const Spawner *spawner;
    char **envp;
    int fd;
    int ucspi_fd;
    int error; /* written by the child when it cannot exec */
} ChildArgs;

/* source as target in the child; dup2 onto itself keeps close-on-exec: clear it instead */
static int child_fd(int source, int target)
{
    return source == target ? fcntl(target, F_SETFD, 0) : dup2(source, target);
}

static int spawn_child(void *arg)
{
    ChildArgs *args = arg;
    const Spawner *spawner = args->spawner;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = SIG_DFL;
    for (int number = 1; number < NSIG; number++)
        if (sigismember(&spawner->defaults, number) == 1)
            sigaction(number, &action, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* 0 and 1 first: fd may be 3 to 5, which ucspi_fd (never below 3) then replaces */
    for (int target = 0; target < 6; target++) {
        int source = target < 2 ? args->fd : target > 2 ? args->ucspi_fd : -1;
        if (source < 0)
            continue;
        if (child_fd(source, target) < 0) {
            args->error = errno;
            _exit(127);
        }
    }
    /* execvp's search: go on past a missing file, a directory, no permission; keep the
     * most telling error. */
    int error = ENOENT;
    for (char **candidate = spawner->candidates; *candidate; candidate++) {
        execve(*candidate, spawner->argv_pointers, args->envp);
        if (errno == ENOENT || errno == ENOTDIR)
            continue;
        error = errno;
        if (errno != EACCES && errno != EPERM && errno != EISDIR)
            break;
    }
    args->error = error;
    _exit(127);
}

/* The child's stack: in this thread's own stack frame, which the kernel's vfork keeps
 * still until the child has exec'd (posix_spawn maps and unmaps one per call, and each
 * unmap costs every CPU running our threads a TLB flush). */
#define CHILD_STACK_SIZE (64 * 1024)

int qboot_spawn(Spawner *self, char **envp, int fd, int ucspi_fd, pid_t *pid)
{
    _Alignas(64) char stack[CHILD_STACK_SIZE];
    ChildArgs args = {self, envp, fd, ucspi_fd, 0};
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* CLONE_VFORK: this thread waits until the child has exec'd or exited */
    pid_t child = clone(spawn_child, stack + sizeof stack, CLONE_VM | CLONE_VFORK | SIGCHLD,
                        &args);
    int clone_error = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (child < 0) {
        *pid = 0;
        return clone_error;
    }
    /* A child that could not exec is left for the loop's waitpid(-1), its one reaper: a
     * waitpid(child) here could come after the loop had reaped it, and with the pid
     * reused take another session's status. */
    *pid = child;
    return args.error;
}

/* -1 (none) or a descriptor the child's 0 and 1 do not hide; else ValueError set. */
static int ucspi_fd_valid(int ucspi_fd)
{
    if (ucspi_fd == -1 || ucspi_fd >= 3)
        return 1;
    PyErr_Format(PyExc_ValueError, "ucspi_fd must be -1 or at least 3");
    return 0;
}

/* spawn(extra, fd, base=None, ucspi_fd=-1): run the program with base (or the server's
 * environment) then extra, both tuples/lists of b"NAME=value", fd as stdin and stdout,
 * and ucspi_fd (if not -1) as 3, 4 and 5. A value with a NUL reaches the program cut
 * there (a C string). Returns the pid. */
static PyObject *spawner_spawn(Spawner *self, PyObject *args)
{
    PyObject *extra_arg, *base_arg = Py_None;
    int fd, ucspi_fd = -1;
    if (!PyArg_ParseTuple(args, "Oi|Oi", &extra_arg, &fd, &base_arg, &ucspi_fd))
        return NULL;
    if (!ucspi_fd_valid(ucspi_fd))
        return NULL;
    if (!self->argv_pointers)
        return PyErr_Format(PyExc_RuntimeError, "Spawner not initialised");
    PyObject *extra = bytes_tuple(extra_arg, "the environment");
    if (!extra)
        return NULL;
    PyObject *base = base_arg == Py_None ? Py_NewRef(self->base)
                                         : bytes_tuple(base_arg, "the environment");
    if (!base) {
        Py_DECREF(extra);
        return NULL;
    }
    Py_ssize_t base_count = PyTuple_GET_SIZE(base), extra_count = PyTuple_GET_SIZE(extra);
    char **envp = PyMem_Calloc((size_t)(base_count + extra_count + 1), sizeof(char *));
    if (!envp) {
        Py_DECREF(extra);
        Py_DECREF(base);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < base_count; i++)
        envp[i] = PyBytes_AS_STRING(PyTuple_GET_ITEM(base, i));
    for (Py_ssize_t i = 0; i < extra_count; i++)
        envp[base_count + i] = PyBytes_AS_STRING(PyTuple_GET_ITEM(extra, i));

    pid_t pid = 0;
    int error;
    /* The kernel's part (vfork until the child has exec'd): let the loop run. */
    Py_BEGIN_ALLOW_THREADS
    error = qboot_spawn(self, envp, fd, ucspi_fd, &pid);
    Py_END_ALLOW_THREADS
    PyMem_Free(envp);
    Py_DECREF(extra);
    Py_DECREF(base);
    if (error != 0) {
        errno = error;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, self->file);
    }
    return PyLong_FromLong((long)pid);
}

static PyMethodDef spawner_methods[] = {
    {"spawn", (PyCFunction)spawner_spawn, METH_VARARGS,
     "spawn(extra, fd, base=None, ucspi_fd=-1) -> pid: spawn with the GIL released."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject SpawnerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qboot_systemd.tcpsrv._core.Spawner",
    .tp_basicsize = sizeof(Spawner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Spawner(argv, base_env, default_signals): spawns of one command line.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)spawner_init,
    .tp_dealloc = (destructor)spawner_dealloc,
    .tp_methods = spawner_methods,
};


/* --- SpawnPool ------------------------------------------------------------------------ */
/* Threads of our own, not Python's, that run a Spawner's spawns: they never need the
 * GIL, so handing a connection to them and hearing back costs no GIL hand-over, only a
 * futex wake and an eventfd the loop watches. Each job owns a copy of its strings. */

void qboot_job_free(Job *job)
{
    if (job) {
        PyMem_RawFree(job->envp);
        PyMem_RawFree(job->strings);
        PyMem_RawFree(job->note);
        PyMem_RawFree(job);
    }
}

void qboot_pool_queue(SpawnPool *pool, Job *job)
{
    job->next = NULL;
    pthread_mutex_lock(&pool->lock);
    if (pool->queue_tail)
        pool->queue_tail->next = job;
    else
        pool->queue_head = job;
    pool->queue_tail = job;
    pthread_cond_signal(&pool->wanted);
    pthread_mutex_unlock(&pool->lock);
}

Job *qboot_pool_take_done(SpawnPool *pool)
{
    uint64_t count;
    (void)!read(pool->event_fd, &count, sizeof count); /* EAGAIN: nothing new, fine */
    pthread_mutex_lock(&pool->lock);
    Job *done = pool->done_head;
    pool->done_head = pool->done_tail = NULL;
    pthread_mutex_unlock(&pool->lock);
    return done;
}

/* Jobs taken but not reported (no memory for the report): back to the front, and the
 * eventfd set again, so the next look finds them. */
static void pool_give_back(SpawnPool *pool, Job *jobs)
{
    if (!jobs)
        return;
    Job *last = jobs;
    while (last->next)
        last = last->next;
    pthread_mutex_lock(&pool->lock);
    last->next = pool->done_head;
    pool->done_head = jobs;
    if (!pool->done_tail)
        pool->done_tail = last;
    pthread_mutex_unlock(&pool->lock);
    uint64_t one = 1;
    (void)!write(pool->event_fd, &one, sizeof one);
}

static void *pool_worker(void *arg)
{
    SpawnPool *pool = arg;
    for (;;) {
        pthread_mutex_lock(&pool->lock);
        while (!pool->queue_head && !pool->stopping)
            pthread_cond_wait(&pool->wanted, &pool->lock);
        Job *job = pool->queue_head;
        if (!job) { /* stopping, and nothing left to spawn */
            pthread_mutex_unlock(&pool->lock);
            return NULL;
        }
        pool->queue_head = job->next;
        if (!pool->queue_head)
            pool->queue_tail = NULL;
        pthread_mutex_unlock(&pool->lock);

        job->error = qboot_spawn(pool->spawner, job->envp, job->fd, job->ucspi_fd, &job->pid);
        close(job->fd); /* the child has its copies */
        if (job->ucspi_fd >= 0)
            close(job->ucspi_fd);

        job->next = NULL;
        pthread_mutex_lock(&pool->lock);
        if (pool->done_tail)
            pool->done_tail->next = job;
        else
            pool->done_head = job;
        pool->done_tail = job;
        pthread_mutex_unlock(&pool->lock);
        uint64_t one = 1;
        while (write(pool->event_fd, &one, sizeof one) < 0 && errno == EINTR) {
        }
    }
}

static int pool_init(SpawnPool *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"spawner", "threads", NULL};
    PyObject *spawner;
    int threads;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!i", keywords, &SpawnerType, &spawner,
                                     &threads))
        return -1;
    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "SpawnPool initialised twice");
        return -1;
    }
    if (threads < 1 || threads > 64) {
        PyErr_SetString(PyExc_ValueError, "threads: 1 to 64");
        return -1;
    }
    if (!((Spawner *)spawner)->argv_pointers) {
        PyErr_SetString(PyExc_ValueError, "the Spawner is not initialised");
        return -1;
    }
    self->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (self->event_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->threads = PyMem_RawCalloc((size_t)threads, sizeof(pthread_t));
    if (!self->threads) {
        close(self->event_fd); /* not ready: dealloc would not */
        self->event_fd = -1;
        PyErr_NoMemory();
        return -1;
    }
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->wanted, NULL);
    self->spawner = (Spawner *)Py_NewRef(spawner);
    self->ready = 1;
    /* The threads block every signal: they are the loop's business, in the main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 0; i < threads; i++) {
        int error = pthread_create(&self->threads[i], NULL, pool_worker, self);
        if (error != 0) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            errno = error;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1; /* close() stops the ones started */
        }
        self->thread_count++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return 0;
}

/* Stop the threads once the queued jobs are spawned; finished() still gives their results. */
static PyObject *pool_close(SpawnPool *self, PyObject *unused)
{
    if (!self->ready)
        Py_RETURN_NONE;
    pthread_mutex_lock(&self->lock);
    self->stopping = 1;
    pthread_cond_broadcast(&self->wanted);
    pthread_mutex_unlock(&self->lock);
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < self->thread_count; i++)
        pthread_join(self->threads[i], NULL);
    Py_END_ALLOW_THREADS
    self->thread_count = 0;
    Py_RETURN_NONE;
}

static void pool_dealloc(SpawnPool *self)
{
    if (self->ready) {
        PyObject *done = pool_close(self, NULL);
        Py_XDECREF(done);
        for (Job *job = self->done_head, *next; job; job = next) {
            next = job->next;
            qboot_job_free(job);
        }
        pthread_mutex_destroy(&self->lock);
        pthread_cond_destroy(&self->wanted);
        close(self->event_fd);
    }
    PyMem_RawFree(self->threads);
    Py_XDECREF(self->spawner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* submit(id, extra, fd, base=None, ucspi_fd=-1): queue a spawn of fd (and ucspi_fd) with
 * the environment as Spawner.spawn takes it. The pool closes the fds once the child has
 * them (or the spawn failed). */
static PyObject *pool_submit(SpawnPool *self, PyObject *args)
{
    long id;
    int fd, ucspi_fd = -1;
    PyObject *extra_arg, *base_arg = Py_None;
    if (!PyArg_ParseTuple(args, "lOi|Oi", &id, &extra_arg, &fd, &base_arg, &ucspi_fd))
        return NULL;
    if (!ucspi_fd_valid(ucspi_fd))
        return NULL;
    if (!self->ready || self->stopping)
        return PyErr_Format(PyExc_RuntimeError, "the SpawnPool is closed");
    PyObject *extra = bytes_tuple(extra_arg, "the environment");
    if (!extra)
        return NULL;
    PyObject *base = base_arg == Py_None ? NULL : bytes_tuple(base_arg, "the environment");
    if (base_arg != Py_None && !base) {
        Py_DECREF(extra);
        return NULL;
    }
    Py_ssize_t shared = base ? 0 : PyTuple_GET_SIZE(self->spawner->base);
    Py_ssize_t own_count = PyTuple_GET_SIZE(extra) + (base ? PyTuple_GET_SIZE(base) : 0);
    size_t bytes = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(extra); i++)
        bytes += (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(extra, i)) + 1;
    for (Py_ssize_t i = 0; base && i < PyTuple_GET_SIZE(base); i++)
        bytes += (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(base, i)) + 1;
    Job *job = PyMem_RawCalloc(1, sizeof(Job));
    if (job) {
        job->envp = PyMem_RawCalloc((size_t)(shared + own_count + 1), sizeof(char *));
        job->strings = PyMem_RawMalloc(bytes ? bytes : 1);
    }
    if (!job || !job->envp || !job->strings) {
        qboot_job_free(job);
        Py_DECREF(extra);
        Py_XDECREF(base);
        return PyErr_NoMemory();
    }
    Py_ssize_t at = 0;
    for (; at < shared; at++)
        job->envp[at] = PyBytes_AS_STRING(PyTuple_GET_ITEM(self->spawner->base, at));
    char *cursor = job->strings;
    PyObject *parts[2] = {base, extra};
    for (int part = 0; part < 2; part++) {
        if (!parts[part])
            continue;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(parts[part]); i++) {
            PyObject *item = PyTuple_GET_ITEM(parts[part], i);
            /* strlen, not the bytes' size: a NUL cuts the value, as in a C string */
            size_t length = strlen(PyBytes_AS_STRING(item));
            memcpy(cursor, PyBytes_AS_STRING(item), length);
            cursor[length] = '\0';
            job->envp[at++] = cursor;
            cursor += length + 1;
        }
    }
    job->envp[at] = NULL;
    Py_DECREF(extra);
    Py_XDECREF(base);
    job->id = id;
    job->fd = fd;
    job->ucspi_fd = ucspi_fd;
    qboot_pool_queue(self, job);
    Py_RETURN_NONE;
}

/* finished() -> [(id, pid, error)]: the spawns done since the last call (error 0: pid). */
static PyObject *pool_finished(SpawnPool *self, PyObject *unused)
{
    if (!self->ready)
        return PyList_New(0);
    Job *job = qboot_pool_take_done(self);
    PyObject *results = PyList_New(0);
    for (Job *next; job; job = next) {
        PyObject *item = results ? Py_BuildValue("(lii)", job->id, (int)job->pid, job->error)
                                 : NULL;
        if (!item || PyList_Append(results, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(results);
            pool_give_back(self, job); /* reported at the next call */
            return NULL;
        }
        Py_DECREF(item);
        next = job->next;
        qboot_job_free(job);
    }
    return results;
}

static PyObject *pool_fileno(SpawnPool *self, PyObject *unused)
{
    return PyLong_FromLong(self->ready ? self->event_fd : -1);
}

static PyMethodDef pool_methods[] = {
    {"submit", (PyCFunction)pool_submit, METH_VARARGS,
     "submit(id, extra, fd, base=None): spawn in a pool thread; it closes fd."},
    {"finished", (PyCFunction)pool_finished, METH_NOARGS,
     "finished() -> [(id, pid, error)] since the last call."},
    {"fileno", (PyCFunction)pool_fileno, METH_NOARGS, "the eventfd readable when done"},
    {"close", (PyCFunction)pool_close, METH_NOARGS, "stop the threads after the queue"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject SpawnPoolType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qboot_systemd.tcpsrv._core.SpawnPool",
    .tp_basicsize = sizeof(SpawnPool),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SpawnPool(spawner, threads): spawns in threads without the GIL.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)pool_init,
    .tp_dealloc = (destructor)pool_dealloc,
    .tp_methods = pool_methods,
};

static PyMethodDef core_methods[] = {
    {"accept", core_accept, METH_O, "accept(listener_fd) -> (fd, (ip, port))"},
    {"local_address", core_local_address, METH_O, "local_address(fd) -> (ip, port)"},
    {"close", core_close, METH_O, "close(fd)"},
    {"set_option", core_set_option, METH_VARARGS, "set_option(fd, level, name, int|None)"},
    {"send_now", core_send_now, METH_VARARGS, "send_now(fd, data)"},
    {"djb_hash", core_djb_hash, METH_O, "djb_hash(key) -> cdb's hash"},
    {"trim_heap", core_trim_heap, METH_NOARGS, "trim_heap() -> bool: malloc_trim(0)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "_core", "qboot-tcpsrv's per-connection system calls.", -1,
    core_methods,
};

PyMODINIT_FUNC PyInit__core(void)
{
    if (PyType_Ready(&SpawnerType) < 0 || PyType_Ready(&SpawnPoolType) < 0 ||
        PyType_Ready(&ConnectionLoopType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&core_module);
    if (!module)
        return NULL;
    if (PyModule_AddObjectRef(module, "Spawner", (PyObject *)&SpawnerType) < 0 ||
        PyModule_AddObjectRef(module, "SpawnPool", (PyObject *)&SpawnPoolType) < 0 ||
        PyModule_AddObjectRef(module, "ConnectionLoop", (PyObject *)&ConnectionLoopType) < 0 ||
        PyModule_AddIntConstant(module, "RUN_TIMEOUT", RUN_TIMEOUT) < 0 ||
        PyModule_AddIntConstant(module, "RUN_SIGNAL", RUN_SIGNAL) < 0 ||
        PyModule_AddIntConstant(module, "RUN_RESOURCE", RUN_RESOURCE) < 0 ||
        PyModule_AddIntConstant(module, "RUN_DRAINED", RUN_DRAINED) < 0 ||
        PyModule_AddIntConstant(module, "RUN_WATCHED", RUN_WATCHED) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
