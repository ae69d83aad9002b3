/* What _core.c and _loop.c share: the Spawner (a command line, the server's environment
 * and the signals to reset, made once), its spawn, and the SpawnPool's jobs. */
#ifndef QBOOT_CORE_H
#define QBOOT_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <sys/types.h>

typedef struct {
    PyObject_HEAD
    PyObject *file;  /* bytes */
    PyObject *argv;  /* tuple of bytes, kept alive for argv_pointers */
    PyObject *base;  /* tuple of bytes: the server's environment */
    char **argv_pointers;
    const char *file_path; /* the bytes of file */
    sigset_t defaults;  /* signals the child gets at their default action */
    char **candidates;  /* where execve looks for file: argv[0], or each PATH entry's */
    char *candidate_strings;
} Spawner;

/* The SpawnPool's threads run queued Jobs; the ConnectionLoop queues its own and takes the done ones
 * (the pool's eventfd tells when). */
typedef struct Job {
    struct Job *next;
    long id;
    int fd;
    int ucspi_fd; /* -1, or the fd the child also gets as 3, 4 and 5 (UCSPI-TLS) */
    pid_t pid;
    int error;
    char **envp;   /* NULL-terminated; points into strings and into the Spawner's base */
    char *strings; /* the job's own copies */
    char *note;    /* the submitter's, for its report (the ConnectionLoop's log lines) */
} Job;

typedef struct {
    PyObject_HEAD
    Spawner *spawner; /* strong reference: its argv, base and attributes stay alive */
    pthread_t *threads;
    int thread_count;
    pthread_mutex_t lock;
    pthread_cond_t wanted;
    Job *queue_head, *queue_tail; /* to spawn */
    Job *done_head, *done_tail;   /* spawned (or failed), for finished() */
    int event_fd;
    int stopping;
    int ready;
} SpawnPool;


/* ConnectionLoop.run()'s outcomes, the module's RUN_* constants for Python. */
enum {
    RUN_TIMEOUT = 0,  /* timeout seconds passed */
    RUN_SIGNAL = 1,   /* a signal for Python's handlers */
    RUN_RESOURCE = 2, /* accept() out of fds or memory, with its errno */
    RUN_DRAINED = 3,  /* after stop(), the last session ended */
    RUN_WATCHED = 4,  /* the watched fd is readable, or hold() kept a connection */
};

extern PyTypeObject SpawnerType;
extern PyTypeObject SpawnPoolType;
extern PyTypeObject ConnectionLoopType;

/* An int argument (PyLong_AsInt is public only from Python 3.13 on). */
int qboot_as_int(PyObject *object, int *out);
/* Run the Spawner's command line with envp and fd as stdin and stdout (and ucspi_fd, when
 * not -1, as 3, 4 and 5), as posix_spawnp would; touches no Python object. Returns 0, or an errno value; *pid is the child's, or
 * 0 if there was none (one that could not exec has exited, and is the caller's loop's to
 * reap with its waitpid(-1): nothing else waits for children). */
int qboot_spawn(Spawner *spawner, char **envp, int fd, int ucspi_fd, pid_t *pid);

void qboot_job_free(Job *job);
/* Hand a job to the pool's threads (they spawn it and close its fd). */
void qboot_pool_queue(SpawnPool *pool, Job *job);
/* The jobs done since the last call, in order (the caller frees them). */
Job *qboot_pool_take_done(SpawnPool *pool);

#endif
