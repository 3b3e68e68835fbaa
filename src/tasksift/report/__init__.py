"""What ``tasksift select`` writes to explain its choice: the nearest target example of each
selected row (:mod:`.explain`) and the page ``report.html`` (:mod:`.select_report`)."""
