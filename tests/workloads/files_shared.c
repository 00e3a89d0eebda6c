/* Two processes sharing open files: argv[1] is a file. Before the fork: the file opened once
 * (shared description) and a pipe; after it, each process opens the file again on its own,
 * the parent keeps the pipe's read end and the child its write end (and writes into it).
 * The child moves the shared file to fd 20, so that its own open takes the number the
 * shared one has in the parent: equal fd numbers must not make equal files.
 * Prints "ready CHILD SHARED OWN PIPE_R PIPE_W" and waits on stdin; the child dies with it. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char line[256];
	int ready[2], p[2];
	int shared = open(argv[1], O_RDONLY);

	lseek(shared, 5, SEEK_SET);
	pipe(p);
	pipe(ready);
	pid_t child = fork();
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(shared, 20);
		close(shared);
		close(p[0]);
		close(ready[0]);
		open(argv[1], O_RDONLY);      /* takes the number `shared` had */
		write(p[1], "from child", 10);
		write(ready[1], "x", 1);
		close(ready[1]);
		for (;;)
			pause();
	}
	close(p[1]);
	close(ready[1]);
	int own = open(argv[1], O_RDONLY);
	read(ready[0], line, 1);      /* the child has opened its file and written */
	close(ready[0]);
	printf("ready %d %d %d %d %d\n", child, shared, own, p[0], p[1]);
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin))
		;
	return 0;
}
